"""Connecting to Ray: a cluster given ``--address``, else a local instance on this machine."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def init_ray(address: str | None = None, min_cpus: float = 0) -> None:
    """``ray.init`` once per process: the cluster at ``address`` (or ``$RAY_ADDRESS``), else a local instance.

    A local instance advertises at least ``min_cpus`` logical CPUs even on a smaller machine, so that a
    job that reserves every core for its actors (Ray Train workers) still leaves Ray Data a CPU to run
    its reading and windowing tasks; the OS shares the cores. A cluster's resources are its own.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")  # set for a Ray job's driver (`tdm submit`)
    if address:
        ray.init(address=address)
        return
    cpus = max(os.cpu_count() or 1, int(min_cpus + 0.999))
    # "local": a new instance even where `ray start` left a cluster on this machine (plain ray.init() joins it).
    # The dashboard is Ray's default (None: started when ray[default] is installed, as it is here); it serves the
    # State API, without which Ray Train's placement-group cleaner logs a warning every second of training
    # (~400 lines in `tdm demo`), and it costs about a second of start-up.
    ray.init(address="local", num_cpus=cpus, include_dashboard=None)
    log.info("started a local Ray instance with %d logical CPUs", cpus)


def submit_experiment(
    experiment: str,
    address: str,
    scale: str = "ci",
    out: str | None = None,
    runtime_env: dict | None = None,
    follow: bool = True,
) -> tuple[str, str]:
    """Submit ``tdm run EXPERIMENT`` as a Ray job to the cluster whose dashboard is at ``address``.

    The job's working directory holds the experiment file alone; this checkout's ``tdm_dist`` package
    travels with it (``py_modules``), so the cluster runs the code you have here. The cluster's Python
    must have the dependencies (installed with constraints.txt; or add ``pip`` to ``runtime_env``). ``out``
    is a path on the cluster; by default the absolute path of ``runs/<name>-<scale>`` here, which is right
    when the head node shares this file system. Follows the job's logs when ``follow``; returns
    (job id, final status or "RUNNING").
    """
    import asyncio
    import shlex
    import shutil
    import tempfile
    import time
    from pathlib import Path

    from ray.job_submission import JobStatus, JobSubmissionClient

    import tdm_dist
    from tdm_dist.experiment import Experiment

    spec = Experiment.load(experiment, scale)  # a bad file fails here, not on the cluster
    out = str(Path(out or f"runs/{spec.name}-{scale}").resolve())
    try:
        client = JobSubmissionClient(address)
    except Exception as e:  # connection refused, not a dashboard, no token for a cluster that wants one, ...
        from tdm_dist.errors import ConfigError

        hint = ""
        if "token" in str(e).lower() and os.environ.get("RAY_AUTH_MODE") != "token":
            hint = "; the cluster wants a token: set RAY_AUTH_MODE=token (token: ~/.ray/auth_token or RAY_AUTH_TOKEN)"
        raise ConfigError(f"cannot submit to {address}: {type(e).__name__}: {str(e).splitlines()[0]}{hint}") from None
    name = Path(experiment).name
    entrypoint = f"python -m tdm_dist.cli run {shlex.quote(name)} --scale {scale} --out {shlex.quote(out)}"
    with tempfile.TemporaryDirectory() as job_dir:
        shutil.copy(experiment, Path(job_dir) / name)
        env = {
            "working_dir": job_dir,
            "py_modules": [str(Path(tdm_dist.__file__).parent)],
            **(runtime_env or {}),
        }
        for attempt in range(60):  # a cluster that just started may not have its job agent up yet
            try:
                job_id = client.submit_job(
                    entrypoint=entrypoint,
                    runtime_env=env,
                    metadata={"experiment": spec.name, "scale": scale, "out": out},
                )
                break
            except RuntimeError as e:
                if "No available agent" not in str(e) or attempt == 59:
                    raise
                time.sleep(1.0)
    print(f"submitted {spec.name} ({scale}) as Ray job {job_id}; results in {out} on the cluster", flush=True)
    if not follow:
        return job_id, "RUNNING"
    asyncio.run(_print_logs(client, job_id))  # until the job ends
    for _ in range(60):  # the log stream can close a moment before the status is final
        status = client.get_job_status(job_id)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            break
        time.sleep(1.0)
    return job_id, str(status.value)


async def _print_logs(client, job_id: str) -> None:
    """Print a job's logs as they come (``tail_job_logs`` streams the new lines only), until the job ends."""
    async for lines in client.tail_job_logs(job_id):
        print(lines, end="", flush=True)
