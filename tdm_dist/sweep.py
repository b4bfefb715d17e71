"""``tdm sweep``: MPC return over a grid of planner settings (or a search over them), as Ray Tune trials.

Each trial is one evaluation (``runtime.evaluate``) of one model at one (K, N). The TDMs' ModelServers
are started once by the driver and shared by every trial (a trial never loads a model); each trial
reserves one CPU per MPCAgent (the agent and its EnvWorker) in its placement group. Results go to
``OUT/sweep.csv``, ``OUT/sweep.json`` and ``OUT/sweep.png`` (the paper's Fig. 4: return against N, one
line per model and K, shaded 68% CI). Tune's state lives in ``OUT/tune``: running the same command again
after an interruption restores the sweep with ``Tuner.restore`` and runs only the unfinished trials; after
a finished sweep it returns the stored results.

``search="optuna"`` tunes the planner (N, K, the noise's β and variance, the proposal's σ) with Optuna
through Tune, under an ASHA scheduler that stops trials whose first episodes score poorly.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tdm_dist import envs
from tdm_dist.errors import ConfigError, TdmError
from tdm_dist.learner.checkpoint import checkpoint_kind
from tdm_dist.runtime.agent import REFERENCES
from tdm_dist.runtime.evaluate import EvalConfig, summarize

SEARCHES = ("grid", "optuna")
_COLUMNS = ["model", "samples", "horizon", "mean_return", "ci68", "episodes", "returns", "stopped", "env_steps_per_s"]


class SweepFailed(TdmError):
    """Some trials raised; the others' results are written and the same command retries the failed ones."""


class SweepInterrupted(KeyboardInterrupt):
    """The sweep stopped before every trial ended; its state is saved and the same command resumes it."""


def parse_models(text: str, checkpoint: str | None = None) -> dict[str, str | None]:
    """``tdm,ground-truth,random,ctx256=runs/b`` -> {line name: checkpoint or None for a reference}.

    ``tdm`` stands for ``--ckpt``; ``NAME=PATH`` adds a learned model (a TDM or a baseline, whichever the
    checkpoint holds) under its own name."""
    models: dict[str, str | None] = {}
    for item in (part.strip() for part in text.split(",")):
        name, _, path = item.partition("=")
        if item in REFERENCES:
            models[item] = None
        elif item == "tdm":
            if not checkpoint:
                raise ConfigError("the model 'tdm' needs a checkpoint (--ckpt), or name one: --models NAME=PATH")
            models["tdm"] = checkpoint
        elif name and path:
            models[name] = path
        else:
            raise ConfigError(f"bad model {item!r} in --models; expected tdm, ground-truth, random or NAME=CHECKPOINT")
    return models


@dataclass
class SweepConfig:
    base: EvalConfig  # env, planner kind, objective, episodes, steps, agents, servers, ... (model and K, N are swept)
    models: dict[str, str | None]  # line name -> checkpoint (TDM or baseline), or None for ground-truth / random
    horizons: list[int] = field(default_factory=lambda: [5, 10, 25, 50, 100])  # planning horizons N
    samples: list[int] = field(default_factory=lambda: [128])  # candidate sequences K
    out: str = "runs/sweep"  # results and Tune's state; the same out resumes
    concurrent: int = 1  # trials running at once
    search: str = "grid"  # "grid" (every model x K x N) or "optuna" (one model; N, K and the noise searched)
    trials: int = 16  # optuna: trials to run

    def evaluation(self, model: str, samples: int, horizon: int, **planner) -> EvalConfig:
        """The evaluation of one trial."""
        checkpoint = self.models[model]
        return self.base.replace(
            model=checkpoint_kind(checkpoint) if checkpoint else model,
            checkpoint=checkpoint,
            planner=self.base.planner.replace(samples=samples, horizon=horizon, **planner),
        )

    def check(self) -> None:
        """Every bad setting raises here, before Ray starts (each model at the longest horizon and most samples)."""
        if not self.models:
            raise ConfigError("a sweep needs at least one model (--models)")
        for name, values in (("horizons", self.horizons), ("samples", self.samples)):
            if not values or any(isinstance(v, bool) or int(v) != v or v < 1 for v in values):
                raise ConfigError(f"{name} must be integers >= 1, got {values!r}")
        if self.search not in SEARCHES:
            raise ConfigError(f"unknown search {self.search!r}; expected one of {', '.join(SEARCHES)}")
        if self.search == "optuna" and len(self.models) != 1:
            names = ", ".join(self.models)
            raise ConfigError(f"a search tunes the planner of one model, got {len(self.models)}: {names}")
        if self.concurrent < 1 or self.trials < 1:
            raise ConfigError(f"concurrent and trials must be >= 1, got {self.concurrent} and {self.trials}")
        if self.base.policy != "mpc":
            raise ConfigError("a sweep varies the planner; it evaluates MPC (policy mpc), not a BC policy")
        for model in self.models:
            self.evaluation(model, max(self.samples), max(self.horizons)).check()

    def describe(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))

    def cpus(self) -> float:
        """Logical CPUs the sweep holds at once, plus one for the driver and Tune: a CPU per ModelServer, and
        per running trial a CPU per agent (with its EnvWorker) and a sliver for the trial itself."""
        servers = self.base.servers * sum(1 for ckpt in self.models.values() if ckpt)
        return servers + self.concurrent * (min(self.base.agents, self.base.episodes) + 0.01) + 1


def _trial(config: dict, sweep: SweepConfig, pools: dict) -> None:
    """One Tune trial: evaluate one model at one planner setting. It reports the running mean after every
    episode (so that ASHA can stop a poor trial early) and the whole result at the end."""
    from ray import tune

    from tdm_dist.runtime.evaluate import evaluate

    model = config["model"]
    planner = {k: config[k] for k in ("beta", "variance", "sigma") if k in config}
    cfg = sweep.evaluation(model, config["samples"], config["horizon"], **planner)

    def report(returns: list[float], **final) -> None:
        mean, ci68 = summarize(returns)
        tune.report({"mean_return": mean, "ci68": ci68, "episodes": len(returns), "returns": list(returns), **final})

    result = evaluate(cfg, progress=False, pool=pools.get(model), on_episode=report)
    report(result["returns"], env_steps_per_s=result["env_steps_per_s"], reruns=result["reruns"], finished=True)


def _param_space(cfg: SweepConfig) -> dict:
    from ray import tune

    if cfg.search == "grid":
        return {
            "model": tune.grid_search(list(cfg.models)),
            "samples": tune.grid_search(list(cfg.samples)),
            "horizon": tune.grid_search(list(cfg.horizons)),
        }
    space = {
        "model": next(iter(cfg.models)),
        "samples": tune.choice(list(cfg.samples)),
        "horizon": tune.randint(min(cfg.horizons), max(cfg.horizons) + 1),
    }
    if cfg.base.planner.kind == "proposal":
        space["sigma"] = tune.loguniform(0.03, 1.0)
    else:
        space["beta"] = tune.uniform(0.0, 3.0)
        space["variance"] = tune.loguniform(0.25, 4.0)
    return space


def _tune_config(cfg: SweepConfig):
    from ray import tune

    if cfg.search == "grid":
        return tune.TuneConfig(max_concurrent_trials=cfg.concurrent)
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    return tune.TuneConfig(
        metric="mean_return",
        mode="max",
        num_samples=cfg.trials,
        max_concurrent_trials=cfg.concurrent,
        search_alg=OptunaSearch(seed=cfg.base.seed),
        # one report per episode plus the final one; a trial is judged after 1, 2, 4, ... episodes
        scheduler=ASHAScheduler(max_t=cfg.base.episodes + 1, grace_period=1, reduction_factor=2),
    )


def run_sweep(cfg: SweepConfig, address: str | None = None, progress: bool = True) -> list[dict]:
    """Run (or resume) the sweep; returns its rows (one per trial) and writes the table and the plot."""
    import ray
    from ray import tune

    from tdm_dist.runtime.cluster import init_ray
    from tdm_dist.runtime.model_server import ModelServerPool

    cfg.check()
    # Tune runs each trial in its own folder: every path the trials read must be absolute
    cfg = dataclasses.replace(
        cfg,
        models={name: ckpt and str(Path(ckpt).resolve()) for name, ckpt in cfg.models.items()},
        base=cfg.base.replace(prompt=cfg.base.prompt and str(Path(cfg.base.prompt).resolve())),
    )
    out = Path(cfg.out).resolve()
    settings = out / "sweep_config.json"
    if settings.exists() and json.loads(settings.read_text()) != cfg.describe():
        raise ConfigError(f"{out} holds a sweep with other settings ({settings}); use another --out")
    if settings.exists() and (out / "sweep.json").exists():  # written last: this sweep has finished
        return json.loads((out / "sweep.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps(cfg.describe(), indent=1))

    agents = min(cfg.base.agents, cfg.base.episodes)
    learned = {name: ckpt for name, ckpt in cfg.models.items() if ckpt}
    b = cfg.base
    init_ray(address, min_cpus=cfg.cpus())
    have = ray.cluster_resources().get("CPU", 0)
    if have < cfg.cpus() - 1:  # trials that can never be placed would wait forever
        raise ConfigError(
            f"the sweep needs {cfg.cpus() - 1:g} CPUs at once ({b.servers} per learned model for its servers, "
            f"{agents} per trial for its agents, {cfg.concurrent} trials at once), the cluster has {have:g}; "
            "lower --agents or --concurrent"
        )
    pools = {
        name: ModelServerPool.start(ckpt, b.servers, seed=b.seed, max_batch=b.max_batch, max_wait_ms=b.max_wait_ms)
        for name, ckpt in learned.items()
    }
    # the trial itself needs next to nothing; each of its agents, with its EnvWorker, one CPU
    resources = tune.PlacementGroupFactory([{"CPU": 0.01}] + [{"CPU": 1.0}] * agents)
    trainable = tune.with_resources(tune.with_parameters(_trial, sweep=cfg, pools=pools), resources)
    path = str(out / "tune")
    try:
        if tune.Tuner.can_restore(path):
            tuner = tune.Tuner.restore(path, trainable, resume_errored=True)
        else:
            run_config = tune.RunConfig(storage_path=str(out), name="tune", verbose=1 if progress else 0)
            tuner = tune.Tuner(
                trainable, param_space=_param_space(cfg), tune_config=_tune_config(cfg), run_config=run_config
            )
        grid = tuner.fit()
    finally:
        for pool in pools.values():
            for server in pool.servers:
                ray.kill(server)
    expected = cfg.trials if cfg.search == "optuna" else len(cfg.models) * len(cfg.samples) * len(cfg.horizons)
    ended = [r for r in grid if r.error or (r.metrics and (r.metrics.get("finished") or cfg.search == "optuna"))]
    if len(ended) < expected:  # Tune stopped on Ctrl-C (SIGINT) and saved its state
        raise SweepInterrupted(
            f"sweep interrupted with {len(ended)} of {expected} trials done; run the same command to resume it"
        )
    rows = [_row(r.config, r.metrics, r.error, cfg.base.episodes) for r in ended]
    rows.sort(key=lambda r: (list(cfg.models).index(r["model"]), r["samples"], r["horizon"]))
    failed = [r for r in rows if r["error"]]
    steps = cfg.base.steps or envs.spec(cfg.base.env).episode_length
    title = f"{cfg.base.env}: {cfg.base.planner.kind} planner, {cfg.base.episodes} episodes of {steps} steps"
    write_results(rows, out, title, complete=not failed)
    if failed:
        print_table(rows)
        raise SweepFailed(
            f"{len(failed)} of {len(rows)} trials failed (first: {failed[0]['model']} K={failed[0]['samples']} "
            f"N={failed[0]['horizon']}: {failed[0]['error'].strip().splitlines()[-1]}); the same command retries them"
        )
    return rows


def _row(config: dict, metrics: dict | None, error, episodes: int) -> dict:
    metrics = metrics or {}
    row = {k: config[k] for k in config}
    for k in ("mean_return", "ci68", "episodes", "returns", "env_steps_per_s"):
        row[k] = metrics.get(k)
    row["stopped"] = (row["episodes"] or 0) < episodes  # stopped early by the scheduler (search), or failed
    row["error"] = str(error) if error else None
    return row


def write_results(rows: list[dict], out: Path, title: str, complete: bool = True) -> None:
    """``sweep.csv`` and ``sweep.png`` in ``out``, and ``sweep.json`` when every trial has a result (it marks a
    finished sweep)."""
    if complete:
        (out / "sweep.json").write_text(json.dumps(rows, indent=1))
    extra = sorted({k for r in rows for k in r} - set(_COLUMNS) - {"error"})
    with open(out / "sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=_COLUMNS + extra + ["error"])
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "returns": " ".join(f"{x:.2f}" for x in r["returns"] or [])})
    plot_over_horizon(rows, out / "sweep.png", title)


def plot_over_horizon(rows: list[dict], path: Path, title: str) -> None:
    """Mean return against N, one line per model and K, the 68% CI shaded (the paper's Fig. 4)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6, 4))
    lines: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["mean_return"] is not None:
            lines.setdefault((r["model"], r["samples"]), []).append(r)
    for (model, k), points in lines.items():
        points.sort(key=lambda r: r["horizon"])
        n = np.array([r["horizon"] for r in points])
        mean = np.array([r["mean_return"] for r in points])
        ci = np.array([r["ci68"] for r in points])
        (line,) = ax.plot(n, mean, marker="o", label=f"{model}, K={k}")
        ax.fill_between(n, mean - ci, mean + ci, color=line.get_color(), alpha=0.2)
    horizons = sorted({r["horizon"] for points in lines.values() for r in points})
    ax.set_xscale("log")
    ax.set_xticks(horizons, [str(n) for n in horizons])  # the swept N, not powers of ten
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("planning horizon N (env steps)")
    ax.set_ylabel("episode return")
    ax.set_title(title, fontsize=10)
    if lines:  # a sweep whose every trial failed has nothing to draw
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_table(rows: list[dict]) -> None:
    print(f"{'model':<16} {'K':>5} {'N':>5} {'mean return':>12} {'68% CI':>8} {'episodes':>9}")
    for r in rows:
        if r["mean_return"] is None:
            print(
                f"{r['model']:<16} {r['samples']:>5} {r['horizon']:>5}  failed: {r['error'].strip().splitlines()[-1]}"
            )
            continue
        note = "  (stopped early)" if r["stopped"] else ""
        print(
            f"{r['model']:<16} {r['samples']:>5} {r['horizon']:>5} {r['mean_return']:>12.1f} {r['ci68']:>8.1f} "
            f"{r['episodes']:>9}{note}"
        )
