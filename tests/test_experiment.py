"""``tdm run`` (experiments as pipelines with reports) and ``tdm submit`` (the same as a Ray job)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tdm_dist.errors import ConfigError
from tdm_dist.experiment import PIECES, Experiment, run_experiment

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((ROOT / "experiments").glob("*.yaml"))
TINY = {
    "name": "tiny",
    "title": "A tiny experiment",
    "paper": "none",
    "scales": {
        "ci": {
            "data": {"d": {"env": "cartpole-swingup", "episodes": 2, "expert": "random"}},
            "models": {"m": {"data": "d", "preset": "tiny", "context": 48, "steps": 4, "eval_every": 4, "workers": 1}},
            "sweeps": {
                "s": {
                    "env": "cartpole-swingup",
                    "models": ["m", "random"],
                    "samples": [4],
                    "horizons": [2],
                    "episodes": 1,
                    "steps": 5,
                    "agents": 1,
                },
            },
            "prederr": {"e": {"env": "cartpole-swingup", "models": ["m"], "horizon": 3, "runs": 2}},
            "report": {"against": "context"},
        }
    },
}


def write(tmp_path: Path, spec: dict, name: str = "tiny.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_the_paper_experiments_are_all_there():
    names = {p.stem for p in EXPERIMENTS}
    assert names >= {
        "specialist_cartpole", "specialist_walker", "specialist_humanoid", "proposal_humanoid", "robustness",
        "fewshot_cartpole", "zeroshot_procwalker", "context_window", "predicted_reward", "tokenization_mlp",
        "prediction_errors",
    }  # fmt: skip


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
@pytest.mark.parametrize("scale", ["ci", "paper"])
def test_every_experiment_loads(path, scale):
    experiment = Experiment.load(path, scale)
    assert (experiment.sweeps or experiment.prederr) and experiment.scale == scale


def test_an_experiment_needing_a_missing_piece_names_it(tmp_path, monkeypatch):
    monkeypatch.setitem(PIECES, "teleport", (lambda: False, "a teleporter (issue 99)"))
    with pytest.raises(ConfigError, match=r"experiment tiny needs a teleporter \(issue 99\), which this version"):
        Experiment.load(write(tmp_path, {**TINY, "needs": ["teleport"]}))
    with pytest.raises(ConfigError, match="unknown need 'warp'; expected one of baselines, prederr"):
        Experiment.load(write(tmp_path, {**TINY, "needs": ["warp"]}))


def test_bad_experiment_files_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        Experiment.load(tmp_path / "nowhere.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        Experiment.load(bad)
    with pytest.raises(ConfigError, match="has no 'paper' scale; it has ci"):
        Experiment.load(write(tmp_path, TINY), "paper")
    with pytest.raises(ConfigError, match="unknown scale 'huge'"):
        Experiment.load(write(tmp_path, TINY), "huge")
    cases = [
        (("models", "m", "data"), "elsewhere", "model 'm' trains on data 'elsewhere', which is not defined"),
        (("sweeps", "s", "models"), ["m", "mlp"], "sweep 's' evaluates 'mlp', which is not a model"),
        (("sweeps", "s", "horizons"), [0], r"tiny.yaml \(ci\): sweep .s.: planner horizon must be an integer >= 1"),
        (("sweeps", "s", "colour"), "red", "sweep 's'.*unexpected keyword argument 'colour'"),
        (("data", "d", "env"), "cartpole-swingupp", "did you mean cartpole-swingup"),
        (("report", "against"), "depth", "plots against 'depth', which not every model sets"),
        (("prederr", "e", "models"), ["m", "rssm"], "prederr 'e' compares 'rssm', not a model of the experiment"),
        (("prederr", "e", "runs"), 0, r"prederr 'e': runs must be an integer >= 1, got 0"),
        (("models", "m", "model"), "mpl", "model 'm': unknown model 'mpl'; known: tdm, mlp"),
    ]
    for keys, value, message in cases:
        spec = json.loads(json.dumps(TINY))
        node = spec["scales"]["ci"]
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
        with pytest.raises(ConfigError, match=message):
            Experiment.load(write(tmp_path, spec))


def test_a_tiny_experiment_runs_end_to_end_and_resumes(ray_session, tmp_path, capsys):
    experiment = Experiment.load(write(tmp_path, TINY))
    report = run_experiment(experiment, out=str(tmp_path / "run"))
    text = report.read_text()
    assert text.startswith("# A tiny experiment")
    assert "| d | cartpole-swingup | 2 |" in text and "| m | data=d, preset=tiny, context=48" in text
    assert "| m | 4 | 2 |" in text and "| random | 4 | 2 |" in text  # the sweep's table
    assert "## Return against context" in text and "| s | 4 | 2 | 48 |" in text
    assert "## Prediction errors `e`" in text and "| model | N=1 | N=3 |" in text
    assert {p.name for p in report.parent.iterdir()} == {
        "README.md", "results.json", "s.png", "context.png", "prederr_e.png"
    }  # fmt: skip
    results = json.loads((report.parent / "results.json").read_text())
    assert results["trained"]["m"]["step"] == 4 and len(results["sweeps"]["s"]) == 2
    assert len(results["prederr"]["e"]["models"]["m"]["median"]) == 3
    capsys.readouterr()
    run_experiment(experiment, out=str(tmp_path / "run"))  # every stage is reused
    out = capsys.readouterr().out
    assert "model m: reusing" in out and "Configuration for experiment" not in out  # no trial ran again
    assert "prederr e: m on cartpole-swingup" in out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head():
    """A real one-node Ray cluster from `ray start --head` on loopback, with token authentication.

    Its own temp dir keeps it out of the default /tmp/ray, so no other Ray user on this machine joins it;
    `--block` ties its processes to ours, so terminating it stops exactly this cluster (`ray stop` would
    stop every Ray instance here, the test session's too)."""
    temp_dir = tempfile.mkdtemp(prefix="tdmhead", dir="/tmp")  # short: Unix socket paths are limited
    dashboard = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    env.pop("RAY_ADDRESS", None)
    # every port of its own: the defaults (e.g. the dashboard agent's 52365) are taken by the test session's Ray
    ports = [f"--{name}={free_port()}" for name in ("port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                    "runtime-env-agent-port", "metrics-export-port",
                                                    "ray-client-server-port")]  # fmt: skip
    head = subprocess.Popen(
        ["ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1", *ports, "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dashboard}", "--num-cpus=3", f"--temp-dir={temp_dir}", "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            ready = subprocess.run(["ray", "job", "list", "--address", address], env=env, capture_output=True)
            if ready.returncode == 0:
                break
            assert head.poll() is None, "ray start --head exited"
            time.sleep(1)
        yield address, env
    finally:
        head.terminate()
        head.wait(timeout=60)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_submit_runs_an_experiment_as_a_ray_job(ray_head, tmp_path):
    address, env = ray_head
    spec = json.loads(json.dumps(TINY))
    del spec["scales"]["ci"]["models"], spec["scales"]["ci"]["report"], spec["scales"]["ci"]["prederr"]
    spec["scales"]["ci"]["sweeps"]["s"]["models"] = ["ground-truth", "random"]
    out = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-m", "tdm_dist.cli", "submit", str(write(tmp_path, spec)), "--address", address,
         "--out", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "submitted tiny (ci) as Ray job" in done.stdout and "report:" in done.stdout  # the job's log, followed
    assert (out / "report" / "README.md").read_text().startswith("# A tiny experiment")
    rows = json.loads((out / "sweeps" / "s" / "sweep.json").read_text())
    assert sorted(r["model"] for r in rows) == ["ground-truth", "random"]
    assert len(list((out / "data" / "d").rglob("*.parquet"))) >= 1


def test_submit_to_no_cluster_is_a_clear_error(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "tdm_dist.cli", "submit", str(write(tmp_path, TINY)), "--address",
         f"http://127.0.0.1:{free_port()}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "tdm submit: error: cannot submit to http://127.0.0.1:" in done.stderr
    bad_env = subprocess.run(
        [sys.executable, "-m", "tdm_dist.cli", "submit", str(write(tmp_path, TINY)), "--address", "http://x:1",
         "--runtime-env", "{pip: [unclosed"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad_env.returncode == 2 and "Traceback" not in bad_env.stderr
    assert "tdm submit: error: --runtime-env is not valid YAML" in bad_env.stderr
