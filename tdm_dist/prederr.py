"""``tdm prederr``: how far a model's open-loop predictions drift from the simulator over the horizon (App. G).

A run starts the environment from a random initial state (``reset(seed)``) and draws one action sequence of
N steps from the random-shooting planner's distribution (colored noise of exponent β and variance, clipped
to [-1, 1]). The simulator plays the sequence; each model predicts the same N observations from the initial
observation alone, open-loop (the TDM, or a baseline, in this process: every run is one batched decode).
The error at horizon h is the RMS over the observation entries that are not velocities (the paper leaves
velocities out) of predicted minus true o_{t+h}; a model's curve is the median over the runs (30 in the
paper, Fig. 13).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from tdm_dist import envs
from tdm_dist.envs.rollout import rollout
from tdm_dist.errors import ConfigError
from tdm_dist.planning.models import PlanState, reward_function, seeded_generator
from tdm_dist.planning.noise import colored_noise
from tdm_dist.tokenizer import History, StepLayout


@dataclass
class PredErrConfig:
    env: str  # registry name
    models: dict[str, str]  # line name -> checkpoint (a TDM or a baseline)
    horizon: int = 50  # N: predict o_{t+1} ... o_{t+N}
    runs: int = 30  # initial states (paper: 30)
    beta: float = 2.0  # the action noise's exponent (the planner's; 2: Brownian)
    variance: float = 2.0  # the action noise's variance (the planner's)
    greedy: bool = False  # the TDM decodes its most likely tokens instead of sampling them
    seed: int = 0  # run i starts from seed * 1_000_000 + i and draws its actions from a generator of (seed, i)
    out: str = "runs/prederr"  # prederr.json, prederr.csv and prederr.png
    device: str | None = None  # default: cuda when there is one

    def check(self) -> None:
        spec = envs.spec(self.env)
        if not self.models:
            raise ConfigError("prederr needs at least one model (--ckpt or --models NAME=CKPT,...)")
        for name in ("horizon", "runs"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        if self.horizon > spec.episode_length:
            raise ConfigError(f"horizon must be <= {spec.episode_length} (the episode length), got {self.horizon}")
        if not self.static_entries(spec).size:
            raise ConfigError(f"{self.env}'s observation has nothing but velocities to compare")

    @staticmethod
    def static_entries(spec) -> np.ndarray:
        """Indices of the observation entries that are not velocities: keys without "veloc" (dm_control's dog
        spells it "velocites") and not ending in "_vel" (manipulator)."""
        index, keep = 0, []
        for key, size in spec.obs_keys:
            if "veloc" not in key and not key.endswith("_vel"):
                keep += range(index, index + size)
            index += size
        return np.asarray(keep, dtype=np.int64)


def ground_truth(cfg: PredErrConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The runs in the simulator -> (initial observations [R, n], actions [R, N, m], true observations [R, N, n])."""
    spec = envs.spec(cfg.env)
    env = envs.make(cfg.env, seed=cfg.seed)
    first, actions, truth = [], [], []
    for i in range(cfg.runs):
        first.append(env.reset(seed=cfg.seed * 1_000_000 + i))
        rng = np.random.default_rng([cfg.seed, i])
        a = np.clip(colored_noise(cfg.beta, 1, cfg.horizon, spec.act_dim, rng, cfg.variance), -1.0, 1.0)
        _, obs = rollout(env, a, observations=True)
        actions.append(a[0]), truth.append(obs[0])
    return np.stack(first), np.stack(actions), np.stack(truth)


def predict(checkpoint: str, cfg: PredErrConfig, first: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """A model's open-loop predictions of every run, from its initial observation: [R, N, n]."""
    from tdm_dist.baselines.model import imagine_many, load_baseline
    from tdm_dist.learner.checkpoint import load_checkpoint, load_model, model_kind
    from tdm_dist.runtime.evaluate import check_env_matches

    spec = envs.spec(cfg.env)
    payload = load_checkpoint(checkpoint)
    check_env_matches(payload.get("env_specs") or {}, spec)
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    histories = [History(o[None].astype(np.float32), np.zeros(1, np.float32), np.zeros((0, spec.act_dim), np.float32))
                 for o in first]  # fmt: skip
    if model_kind(payload) != "tdm":
        model = load_baseline(checkpoint, device)
        questions = [(PlanState(cfg.env, h), a[None], "auto") for h, a in zip(histories, actions, strict=True)]
        return np.stack([p.obs[0] for p in imagine_many(model, questions, seeded_generator(model.device, cfg.seed))])
    model = load_model(checkpoint, device)
    StepLayout(spec.obs_dim, spec.act_dim).check_horizon(cfg.horizon, model.cfg.context, f"the TDM {checkpoint}")
    fn = reward_function(cfg.env)  # rewards from the predicted observations where they can be: nothing to decode
    with torch.no_grad():
        out = model.imagine_batch(
            histories,
            torch.as_tensor(actions[:, None], dtype=torch.float32),
            reward_fns=None if fn is None else [fn] * len(histories),
            greedy=cfg.greedy,
            generator=seeded_generator(model.device, cfg.seed),
        )
    return out.obs[:, 0].cpu().double().numpy()


def rms_errors(predicted: np.ndarray, truth: np.ndarray, entries: np.ndarray) -> np.ndarray:
    """RMS over ``entries`` of predicted minus true observations: [R, N, n] x2 -> [R, N]."""
    diff = predicted[..., entries] - truth[..., entries]
    return np.sqrt(np.mean(diff**2, axis=-1))


def prediction_errors(cfg: PredErrConfig, progress: bool = True) -> dict:
    """Every model's errors -> {settings, entries, models: {name: {checkpoint, median [N], runs [R, N]}}}."""
    cfg.check()
    spec = envs.spec(cfg.env)
    entries = cfg.static_entries(spec)
    first, actions, truth = ground_truth(cfg)
    results = {}
    for name, checkpoint in tqdm(cfg.models.items(), desc=f"prederr {cfg.env}", unit="model", disable=not progress):
        errors = rms_errors(predict(checkpoint, cfg, first, actions), truth, entries)
        results[name] = {"checkpoint": checkpoint, "median": np.median(errors, axis=0).tolist(),
                         "runs": errors.tolist()}  # fmt: skip
    names = [f"{key}[{i}]" for key, size in spec.obs_keys for i in range(size)]
    return {"settings": asdict(cfg), "entries": [names[i] for i in entries], "models": results}


def write_results(result: dict, out: str | Path) -> Path:
    """``prederr.json`` (everything), ``prederr.csv`` (the medians) and ``prederr.png`` (Fig. 13's plot) in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "prederr.json").write_text(json.dumps(result, indent=1))
    models = result["models"]
    horizon = result["settings"]["horizon"]
    lines = ["horizon," + ",".join(models)]
    lines += [f"{h + 1}," + ",".join(f"{m['median'][h]:.6g}" for m in models.values()) for h in range(horizon)]
    (out / "prederr.csv").write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    steps = np.arange(1, horizon + 1)
    for name, m in models.items():
        runs = np.asarray(m["runs"])
        ax.plot(steps, m["median"], label=name)
        ax.fill_between(steps, *np.percentile(runs, [25, 75], axis=0), alpha=0.15)
    s = result["settings"]
    ax.set(xlabel="prediction horizon N", ylabel="RMS error, velocities left out", yscale="log")
    ax.set_title(f"{s['env']}: median of {s['runs']} runs, 25-75% shaded", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "prederr.png", dpi=120)
    plt.close(fig)
    return out / "prederr.png"


def shown_horizons(horizon: int) -> list[int]:
    """The horizons a table shows: 1, 5, 10, 25, 50, 100 up to ``horizon``, and ``horizon``."""
    return sorted({h for h in (1, 5, 10, 25, 50, 100) if h <= horizon} | {horizon})


def print_table(result: dict) -> None:
    shown = shown_horizons(result["settings"]["horizon"])
    print(f"median RMS error (entries: {', '.join(result['entries'])})")
    print(f"{'model':<24}" + "".join(f"{'N=' + str(h):>10}" for h in shown))
    for name, m in result["models"].items():
        print(f"{name:<24}" + "".join(f"{m['median'][h - 1]:>10.4f}" for h in shown))
