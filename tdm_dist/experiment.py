"""``tdm run experiments/X.yaml``: one paper experiment as a pipeline, collect -> train -> sweep -> report.

An experiment file names the paper's experiment and gives each scale (``ci``: sized for 2 CPUs and a
30-minute budget; ``paper``: the paper's data and model sizes, for a cluster) its stages::

    name: specialist_cartpole
    title: Specialist TDM against ground-truth MPC on cartpole-swingup
    paper: "§5.1, Fig. 4a"
    needs: []                       # pieces beyond the TDM: baselines, prederr
    scales:
      ci:
        data:                       # datasets, by key: CollectConfig fields (expert: gt-mpc | random | rllib:PATH)
          cartpole: {env: cartpole-swingup, episodes: 16, action_noise: 0.5}
        models:                     # TDMs, by key: TrainConfig fields; data: a dataset key; init_from: a model key
          tdm: {data: cartpole, preset: tiny, context: 128, steps: 1200}
        sweeps:                     # evaluations, by key: SweepConfig / EvalConfig / PlannerConfig fields
          over_n: {env: cartpole-swingup, models: [tdm, ground-truth, random], horizons: [5, 10, 25], ...}
        prederr:                    # optional, by key: PredErrConfig fields; models: model keys (App. G)
          errors: {env: cartpole-swingup, models: [tdm], horizon: 25, runs: 30}
        report: {against: context}  # optional: also plot return against a training setting of the models

Everything lands in the run folder (default ``runs/<name>-<scale>``): ``data/<key>``, ``models/<key>``,
``sweeps/<key>``, ``prederr/<key>`` and ``report/`` (``README.md`` with the tables, and the PNGs). Every
stage resumes, so a re-run after an interruption continues where it stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import shutil
import time
from pathlib import Path

import numpy as np
import yaml

from tdm_dist.errors import ConfigError

SCALES = ("ci", "paper")


def _trains_baselines() -> bool:
    """Whether the learner trains the baseline models (``TrainConfig.model``), which the ModelServer then serves."""
    from tdm_dist.learner.train import TrainConfig

    return "model" in {f.name for f in dataclasses.fields(TrainConfig)}


def _has_prederr() -> bool:
    return importlib.util.find_spec("tdm_dist.prederr") is not None


# Pieces an experiment may need beyond the TDM: (whether this version has it, what it is).
PIECES = {
    "baselines": (
        _trains_baselines,
        "the baseline dynamics models trained and served like the TDM (`tdm train --model NAME`; issue 6)",
    ),
    "prederr": (_has_prederr, "the prediction-error evaluation `tdm prederr` (App. G; issue 6)"),
}
_SWEEP_FIELDS = {"models", "horizons", "samples", "concurrent", "search", "trials"}
_PLANNER_FIELDS = {"kind", "beta", "variance", "sigma", "iterations", "elites", "replan_every"}


@dataclasses.dataclass
class Experiment:
    name: str
    title: str
    paper: str  # where in the paper
    scale: str
    data: dict[str, dict]
    models: dict[str, dict]
    sweeps: dict[str, dict]
    prederr: dict[str, dict]
    report: dict
    source: str  # the YAML file

    @classmethod
    def load(cls, path: str | Path, scale: str = "ci") -> Experiment:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"experiment file {path} does not exist; the experiments are in experiments/*.yaml")
        try:
            spec = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from None
        if not isinstance(spec, dict) or "scales" not in spec:
            raise ConfigError(f"{path}: expected a mapping with name, title and scales (see tdm_dist/experiment.py)")
        if scale not in SCALES:
            raise ConfigError(f"unknown scale {scale!r}; expected one of {', '.join(SCALES)}")
        if scale not in spec["scales"]:
            raise ConfigError(f"{path} has no {scale!r} scale; it has {', '.join(spec['scales'])}")
        for piece in spec.get("needs", []):
            present, what = PIECES.get(piece, (None, None))
            if present is None:
                raise ConfigError(f"{path}: unknown need {piece!r}; expected one of {', '.join(PIECES)}")
            if not present():
                name = spec.get("name", path.stem)
                raise ConfigError(f"experiment {name} needs {what}, which this version does not have yet")
        stages = spec["scales"][scale]
        experiment = cls(
            name=spec.get("name", path.stem),
            title=spec.get("title", path.stem),
            paper=spec.get("paper", ""),
            scale=scale,
            data=stages.get("data", {}),
            models=stages.get("models", {}),
            sweeps=stages.get("sweeps", {}),
            prederr=stages.get("prederr", {}),
            report=stages.get("report", {}),
            source=str(path),
        )
        experiment.check()
        return experiment

    def check(self) -> None:
        """Every reference between the stages resolves, and every stage's settings are valid, before Ray starts."""
        where = f"{self.source} ({self.scale})"
        for key, model in self.models.items():
            if model.get("data") not in self.data:
                raise ConfigError(f"{where}: model {key!r} trains on data {model.get('data')!r}, which is not defined")
            if "init_from" in model and model["init_from"] not in self.models:
                raise ConfigError(f"{where}: model {key!r} starts from {model['init_from']!r}, which is not defined")
        if not self.sweeps and not self.prederr:
            raise ConfigError(f"{where}: an experiment needs at least one sweep or prederr stage")
        for key, errors in self.prederr.items():
            for name in errors.get("models", []):
                if name not in self.models:
                    raise ConfigError(f"{where}: prederr {key!r} compares {name!r}, not a model of the experiment")
        for key, sweep in self.sweeps.items():
            for name in sweep.get("models", []):
                if name not in self.models and name not in ("ground-truth", "random"):
                    raise ConfigError(
                        f"{where}: sweep {key!r} evaluates {name!r}, which is not a model of the experiment"
                    )
            if sweep.get("prompt") is not None and sweep["prompt"] not in self.data:
                raise ConfigError(f"{where}: sweep {key!r} prompts with data {sweep['prompt']!r}, which is not defined")
        against = self.report.get("against")
        if against is not None and any(against not in m for m in self.models.values()):
            raise ConfigError(f"{where}: the report plots against {against!r}, which not every model sets")
        nowhere = Path("/nonexistent")
        for key, data in self.data.items():
            with _naming(f"{where}: data {key!r}"):
                self.collect_config(key, data, nowhere).check()
        for key, model in self.models.items():
            with _naming(f"{where}: model {key!r}"):
                self.train_config(key, model, nowhere).check()
        for key, sweep in self.sweeps.items():  # everything but the models, which do not exist yet: a stand-in
            with _naming(f"{where}: sweep {key!r}"):  # random model checks the env, the planner and the grid
                cfg = self.sweep_config(key, sweep, nowhere)
                base = cfg.base.replace(prompt=None, planner=cfg.base.planner.replace(kind="shooting"))
                dataclasses.replace(cfg, base=base, models={"random": None}).check()
        for key, errors in self.prederr.items():
            with _naming(f"{where}: prederr {key!r}"):
                self.prederr_config(key, errors, nowhere).check()

    # --- the stages' configs ------------------------------------------------------------------------

    def collect_config(self, key: str, data: dict, run: Path):
        from tdm_dist.runtime.collect import CollectConfig
        from tdm_dist.runtime.env_worker import ExpertConfig

        fields = dict(data)
        expert = ExpertConfig.parse(
            fields.pop("expert", "gt-mpc"),
            action_noise=fields.pop("action_noise", 0.0),
            planner=fields.pop("planner", {}),
        )
        try:
            return CollectConfig(out=str(run / "data" / key), expert=expert, **fields)
        except TypeError as e:
            raise ConfigError(str(e)) from None

    def train_config(self, key: str, model: dict, run: Path):
        from tdm_dist.learner.train import TrainConfig

        fields = {k: v for k, v in model.items() if k not in ("data", "init_from")}
        init_from = str(run / "models" / model["init_from"] / "model.pt") if "init_from" in model else None
        try:
            return TrainConfig(data=str(run / "data" / model["data"]), out=str(run / "models" / key),
                               init_from=init_from, **fields)  # fmt: skip
        except TypeError as e:
            raise ConfigError(str(e)) from None

    def sweep_config(self, key: str, sweep: dict, run: Path):
        from tdm_dist.planning.optimizers import PlannerConfig
        from tdm_dist.runtime.evaluate import EvalConfig
        from tdm_dist.sweep import SweepConfig

        fields = dict(sweep)
        outer = {k: fields.pop(k) for k in list(fields) if k in _SWEEP_FIELDS}
        planner = {k: fields.pop(k) for k in list(fields) if k in _PLANNER_FIELDS}
        if fields.get("prompt") is not None:
            fields["prompt"] = str(run / "data" / fields["prompt"])
        names = outer.pop("models")
        models = {n: (str(run / "models" / n / "model.pt") if n in self.models else None) for n in names}
        samples, horizons = outer.get("samples", [128]), outer.get("horizons", [5, 10, 25, 50, 100])
        try:
            base = EvalConfig(planner=PlannerConfig(samples=max(samples), horizon=max(horizons), **planner), **fields)
            return SweepConfig(base=base, models=models, out=str(run / "sweeps" / key), **outer)
        except TypeError as e:
            raise ConfigError(str(e)) from None

    def prederr_config(self, key: str, errors: dict, run: Path):
        from tdm_dist.prederr import PredErrConfig

        fields = dict(errors)
        models = {n: str(run / "models" / n / "model.pt") for n in fields.pop("models", [])}
        try:
            return PredErrConfig(models=models, out=str(run / "prederr" / key), **fields)
        except TypeError as e:
            raise ConfigError(str(e)) from None


@contextlib.contextmanager
def _naming(where: str):
    """Prefix a stage's ConfigError with the file, scale and stage it comes from."""
    try:
        yield
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def run_experiment(exp: Experiment, out: str | None = None, address: str | None = None) -> Path:
    """Run (or resume) every stage; returns the report's Markdown file."""
    from tdm_dist.learner.train import train
    from tdm_dist.prederr import prediction_errors
    from tdm_dist.prederr import print_table as print_prederr
    from tdm_dist.prederr import write_results as write_prederr
    from tdm_dist.runtime.cluster import init_ray
    from tdm_dist.runtime.collect import collect
    from tdm_dist.sweep import print_table, run_sweep

    start = time.perf_counter()
    run = Path(out or f"runs/{exp.name}-{exp.scale}").resolve()
    run.mkdir(parents=True, exist_ok=True)
    trainers = [exp.train_config(k, m, run) for k, m in exp.models.items()]
    collectors = [exp.collect_config(k, d, run) for k, d in exp.data.items()]
    init_ray(
        address,
        min_cpus=max(
            [exp.sweep_config(k, s, run).cpus() for k, s in exp.sweeps.items()]
            + [t.workers * t.cpus_per_worker + 1 for t in trainers]  # + 1 for Ray Data's tasks
            + [c.workers for c in collectors]
        ),
    )
    stages = len(exp.data) + len(exp.models) + len(exp.sweeps) + len(exp.prederr)
    step = 0

    def stage(text: str) -> None:
        nonlocal step
        step += 1
        print(f"\n[{step}/{stages}] {text}", flush=True)

    for key, data in exp.data.items():
        cfg = exp.collect_config(key, data, run)
        stage(f"data {key}: {cfg.episodes} episodes of {cfg.env} ({cfg.expert.kind}) -> {cfg.out}")
        collect(cfg, address)

    trained: dict[str, dict] = {}
    for key, model in exp.models.items():
        cfg = exp.train_config(key, model, run)
        metrics = Path(cfg.out) / "metrics.json"
        if metrics.exists():
            stage(f"model {key}: reusing {cfg.out}/model.pt")
        else:
            stage(f"model {key}: {cfg.steps} steps on data {model['data']} -> {cfg.out}")
            result = train(cfg, address)
            metrics.write_text(json.dumps({k: v for k, v in result.items() if _plain(v)}, indent=1))
        trained[key] = json.loads(metrics.read_text())

    swept: dict[str, list[dict]] = {}
    for key, sweep in exp.sweeps.items():
        cfg = exp.sweep_config(key, sweep, run)
        stage(f"sweep {key}: {', '.join(cfg.models)} on {cfg.base.env}, K in {cfg.samples}, N in {cfg.horizons}")
        swept[key] = run_sweep(cfg, address, progress=False)
        print_table(swept[key])

    errors: dict[str, dict] = {}
    for key, spec in exp.prederr.items():
        cfg = exp.prederr_config(key, spec, run)
        stored = Path(cfg.out) / "prederr.json"
        stage(f"prederr {key}: {', '.join(cfg.models)} on {cfg.env}, {cfg.runs} runs of {cfg.horizon} steps")
        if not stored.exists() or json.loads(stored.read_text())["settings"] != dataclasses.asdict(cfg):
            write_prederr(prediction_errors(cfg, progress=False), cfg.out)
        errors[key] = json.loads(stored.read_text())
        print_prederr(errors[key])
    return write_report(exp, run, trained, swept, time.perf_counter() - start, errors)


def _plain(value) -> bool:
    return isinstance(value, (int, float, str, bool)) or value is None


def write_report(
    exp: Experiment, run: Path, trained: dict, swept: dict, wall_s: float, errors: dict | None = None
) -> Path:
    """``run/report/README.md`` with the settings and tables, the sweeps' and prediction errors' plots beside it."""
    from tdm_dist.data import summarize
    from tdm_dist.prederr import shown_horizons

    report = run / "report"
    report.mkdir(exist_ok=True)
    lines = [f"# {exp.title}", "", f"Paper: {exp.paper}. Experiment `{exp.source}`, scale `{exp.scale}`.", ""]
    if exp.data:
        lines += ["## Data", "", "| data | envs | episodes | mean return | expert |", "| --- | --- | --- | --- | --- |"]
        for key, data in exp.data.items():
            summary = summarize(run / "data" / key).values()
            episodes = sum(s["episodes"] for s in summary)
            mean = sum(s["return"]["mean"] * s["episodes"] for s in summary) / max(episodes, 1)
            noise = f", action noise {data['action_noise']}" if data.get("action_noise") else ""
            lines.append(f"| {key} | {data['env']} | {episodes} | {mean:.1f} | {data.get('expert', 'gt-mpc')}{noise} |")
        lines.append("")
    if exp.models:
        lines += [
            "## Models",
            "",
            "| model | settings | steps | val loss | unigram NLL |",
            "| --- | --- | --- | --- | --- |",
        ]
        for key, model in exp.models.items():
            m = trained[key]
            settings = ", ".join(f"{k}={v}" for k, v in model.items())
            loss = m.get("val/loss", m.get("val/nll", float("nan")))
            unigram = f"{m['val/unigram_nll']:.3f}" if "val/unigram_nll" in m else "—"  # the TDM's only
            lines.append(f"| {key} | {settings} | {m.get('step')} | {loss:.4g} | {unigram} |")
        lines += ["", "Val loss: the TDM's NLL per token; a baseline's own training loss (MSE of normalized targets, "
                  "cross-entropy of tokens, or Gaussian NLL), not comparable across kinds.", ""]  # fmt: skip
    for key, rows in swept.items():
        sweep = exp.sweeps[key]
        shutil.copy(run / "sweeps" / key / "sweep.png", report / f"{key}.png")
        settings = ", ".join(f"{k}={v}" for k, v in sweep.items() if k not in ("models", "horizons", "samples"))
        lines += [f"## Sweep `{key}`", "", f"Settings: {settings}.", "", f"![{key}]({key}.png)", ""]
        lines += ["| model | K | N | mean return | 68% CI | episodes |", "| --- | --- | --- | --- | --- | --- |"]
        for r in rows:
            lines.append(
                f"| {r['model']} | {r['samples']} | {r['horizon']} | {r['mean_return']:.1f} | {r['ci68']:.1f} | "
                f"{r['episodes']} |"
            )
        lines.append("")
    for key, result in (errors or {}).items():
        shutil.copy(run / "prederr" / key / "prederr.png", report / f"prederr_{key}.png")
        s = result["settings"]
        shown = shown_horizons(s["horizon"])
        lines += [f"## Prediction errors `{key}`", "",
                  f"RMS error of the predicted {', '.join(result['entries'])} against the simulator, median of "
                  f"{s['runs']} runs from random initial states under the planner's action noise (β={s['beta']}, "
                  f"variance {s['variance']}).", "", f"![prederr {key}](prederr_{key}.png)", "",
                  "| model | " + " | ".join(f"N={h}" for h in shown) + " |",
                  "| --- |" + " --- |" * len(shown)]  # fmt: skip
        for name, m in result["models"].items():
            lines.append(f"| {name} | " + " | ".join(f"{m['median'][h - 1]:.4f}" for h in shown) + " |")
        lines.append("")
    against = exp.report.get("against")
    if against:
        lines += _against_section(exp, swept, against, report)
    lines += [f"Wall time of this run: {wall_s:.0f} s (a stage finished by an earlier run is reused, not repeated)."]
    path = report / "README.md"
    path.write_text("\n".join(lines) + "\n")
    (report / "results.json").write_text(json.dumps({"trained": trained, "sweeps": swept, "prederr": errors}, indent=1))
    return path


def _against_section(exp: Experiment, swept: dict, against: str, report: Path) -> list[str]:
    """Mean return against a training setting of the models (e.g. the context length, App. C)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    value = {key: model[against] for key, model in exp.models.items()}
    fig, ax = plt.subplots(figsize=(5, 3.5))
    lines = [f"## Return against {against}", "", f"![{against}]({against}.png)", ""]
    lines += [f"| sweep | K | N | {against} | mean return | 68% CI |", "| --- | --- | --- | --- | --- | --- |"]
    for key, rows in swept.items():
        series: dict[tuple, list] = {}
        for r in rows:
            if r["model"] in value:
                series.setdefault((r["samples"], r["horizon"]), []).append((value[r["model"]], r))
        for (k, n), points in series.items():
            points.sort(key=lambda p: p[0])
            x = [p[0] for p in points]
            mean = np.array([p[1]["mean_return"] for p in points])
            ci = np.array([p[1]["ci68"] for p in points])
            (line,) = ax.plot(x, mean, marker="o", label=f"{key}: K={k}, N={n}")
            ax.fill_between(x, mean - ci, mean + ci, color=line.get_color(), alpha=0.2)
            lines += [f"| {key} | {k} | {n} | {v} | {r['mean_return']:.1f} | {r['ci68']:.1f} |" for v, r in points]
    ax.set_xlabel(against)
    ax.set_ylabel("episode return")
    ax.set_title(exp.title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(report / f"{against}.png", dpi=120)
    plt.close(fig)
    return [*lines, ""]
