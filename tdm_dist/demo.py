"""``tdm demo``: the main job, end to end on a local Ray instance in about 10 minutes on 2 CPU cores.

1. collect a small ground-truth-MPC expert dataset on cartpole-swingup (EnvWorker actors, Parquet);
2. train a tiny TDM on it (Ray Data + Ray Train);
3. evaluate MPC with the TDM (through a ModelServer; it plans with its own BC proposal, §5.1.1), with the
   ground-truth simulator (random shooting) and with random actions, all at the same K and N (MPCAgent actors);
4. print the comparison, save a bar chart and the results as JSON.

Every stage resumes: a re-run with the same ``--out`` reuses the dataset and the trained model. The last line
is machine-readable: ``demo tdm=<mean return> ground_truth=<mean return> random=<mean return> wall_s=<seconds>``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

from tdm_dist.errors import ConfigError

ENV = "cartpole-swingup"
TDM_PLANNERS = ("proposal", "shooting")  # how the demo's TDM may plan (``DemoConfig.tdm_planner``)


@dataclass
class DemoConfig:
    out: str = "runs/demo"  # dataset, run, plot and results go here
    data_episodes: int = 80  # expert episodes to train on. The tiny TDM overfits 40 (measured, 1,200 bf16 steps: train
    # loss 2.18 against validation 2.61; NLL on 8 other episodes 2.54 from 40 episodes, 2.38 from 80; both before
    # the bin embeddings started sinusoidal, which took 80 episodes' NLL to 2.25-2.28)
    data_steps: int = 400  # env steps per expert episode, as many as an evaluation episode has. The expert needs
    # ~250 of them to swing the pole up: cut here, the swing-up (where the tiny TDM fails) is ~60% of the data.
    # A larger share did not clearly help: 160 x 200 steps returned 75.6, 240 x 200 25.3 (one model each)
    action_noise: float = 0.5  # std of the noise on the expert's actions: the model must see what actions do
    train_steps: int = 1200  # optimizer steps of the tiny TDM
    batch_size: int = 8  # training windows per step and worker (2 workers)
    precision: str = "auto"  # of training: bf16 where the CPU computes in it (experiments/benchmarks/train.py, one
    # AVX512-BF16 core: 1.70x fp32's steps per second; the demo's 1,200 steps train at ~25k tokens/s, in ~3.7 minutes)
    lr: float = 2e-3  # peak learning rate: a short schedule (measured: val NLL 2.433 against 2.565 at 1e-3)
    context: int = 256  # the TDM's context in tokens: 32 timesteps of cartpole, room for the horizon
    samples: int = 32  # K, the same for every model
    horizon: int = 25  # N, the same for every model. Hanging down, the pole's reward moves too little within
    # 10 steps for the tiny TDM to rank candidates by it; 25 steps give the swing-up a signal it can see
    replan_every: int = 3  # env steps between plans, the same for every model: keeps N=25 within the budget
    tdm_planner: str = "proposal"  # how the TDM plans: "proposal" (§5.1.1: the TDM's own BC actions along the imagined
    # trajectory plus Brownian noise, scored by the TDM) or "shooting" (the same random shooting as ground truth).
    # Ground truth has no policy to propose with, so it plans by random shooting (as the paper's Fig. 5 compares).
    # With shooting, the four models of sigma's comment returned 36.4, 45.8, 64.3 and 31.1
    sigma: float = 0.1  # proposal: std of the Brownian noise on the BC actions. Measured on four demo models, same
    # K, N and seeds: 130.4, 165.1, 93.6, 105.8 at 0.1 against 73.1, 57.9, 103.2, 67.1 at 0.3 (0.03: 83.7 and 110.3
    # on the last two; 0.6: 102.6, 90.1; 1.0: 68.1, 78.1). The paper's Fig. 5 finds the same shape: too much noise
    # washes out the proposal's bias
    greedy: bool = True  # the TDM decodes its most likely tokens: with this little data, sampling noise swamps the
    # differences between candidates (measured: correlation with the true returns ~0.0 sampled, ~0.6 greedy)
    episodes: int = 4  # evaluation episodes per model
    servers: int = 2  # ModelServers for the TDM. Measured on 2 cores, two of one thread each against one of two:
    # 7.0 against 5.3 env steps/s over 100-step episodes, 5.8 against 5.4 over the demo's 400 (longer histories)
    steps: int = 400  # environment steps per evaluation episode (the budget; full episodes are 1000)
    seed: int = 0

    # The settings that make the dataset and the model: a re-run reuses both only if these are unchanged.
    BUILD = (
        "data_episodes",
        "data_steps",
        "action_noise",
        "train_steps",
        "batch_size",
        "precision",
        "lr",
        "context",
        "seed",
    )

    def build(self) -> dict:
        """The BUILD settings, as ``settings.json`` records them."""
        return {k: getattr(self, k) for k in self.BUILD}

    def planner(self):
        """Random shooting at the demo's K, N and re-planning (a ``PlannerConfig``): ground truth's and random's
        planner, and the base of the TDM's (``tdm_planner_config``)."""
        from tdm_dist.planning.optimizers import PlannerConfig

        return PlannerConfig(samples=self.samples, horizon=self.horizon, replan_every=self.replan_every)

    def tdm_planner_config(self):
        """The TDM's planner: ``planner()``'s K, N and re-planning, with ``tdm_planner``'s candidates."""
        if self.tdm_planner not in TDM_PLANNERS:
            raise ConfigError(f"demo tdm_planner must be one of {', '.join(TDM_PLANNERS)}, got {self.tdm_planner!r}")
        return self.planner().replace(kind=self.tdm_planner, sigma=self.sigma)

    def planning(self) -> str:
        """How each model plans, in words."""
        if self.tdm_planner == "proposal":
            return f"TDM: proposal, sigma={self.sigma}; others: random shooting"
        return "every model: random shooting"

    def check(self) -> None:
        """Raise ``ConfigError`` for settings the demo cannot run, before anything starts."""
        from tdm_dist import envs
        from tdm_dist.tokenizer import StepLayout

        for name in ("data_episodes", "data_steps", "train_steps", "batch_size", "episodes", "steps", "servers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"demo {name} must be >= 1, got {getattr(self, name)}")
        self.tdm_planner_config()  # checks samples, horizon, replan_every, the TDM's planner and sigma
        spec = envs.spec(ENV)
        spec.episode_steps(self.data_steps, "demo data_steps")
        StepLayout(spec.obs_dim, spec.act_dim).check_horizon(self.horizon, self.context, "the demo's TDM")


def run_demo(cfg: DemoConfig, address: str | None = None) -> dict:
    from tdm_dist.learner.checkpoint import resolve_checkpoint
    from tdm_dist.learner.train import TrainConfig, train
    from tdm_dist.runtime.cluster import init_ray
    from tdm_dist.runtime.collect import CollectConfig, collect
    from tdm_dist.runtime.env_worker import ExpertConfig
    from tdm_dist.runtime.evaluate import EvalConfig, evaluate

    cfg.check()
    start = time.perf_counter()
    out = Path(cfg.out)
    data, run = out / "data", out / "run"
    check_reuse(cfg, out)
    out.mkdir(parents=True, exist_ok=True)
    (out / SETTINGS).write_text(json.dumps(cfg.build(), indent=2))
    init_ray(address, min_cpus=cfg.episodes + cfg.servers)

    print(f"[1/3] expert data: {cfg.data_episodes} ground-truth MPC episodes of {ENV} -> {data}")
    collect(
        CollectConfig(
            env=ENV,
            episodes=cfg.data_episodes,
            out=str(data),
            expert=ExpertConfig(kind="gt-mpc", action_noise=cfg.action_noise),
            seed=cfg.seed,
            steps=cfg.data_steps,
        ),
        address,
    )

    try:
        checkpoint = resolve_checkpoint(run / "model.pt")
        print(f"[2/3] tiny TDM: reusing {checkpoint}")
    except Exception:
        print(f"[2/3] tiny TDM: training {cfg.train_steps} steps on {data} -> {run}")
        trained = train(
            TrainConfig(
                data=str(data),
                out=str(run),
                context=cfg.context,
                steps=cfg.train_steps,
                batch_size=cfg.batch_size,
                lr=cfg.lr,
                precision=cfg.precision,
                seed=cfg.seed,
            ),
            address,
        )
        checkpoint = trained["checkpoint"]
        print(f"      val nll {trained['val/nll']:.3f} (unigram baseline {trained['val/unigram_nll']:.3f})")

    planner = cfg.planner()
    print(
        f"[3/3] evaluating MPC (K={cfg.samples}, N={cfg.horizon}, re-planning every {cfg.replan_every} steps; "
        f"{cfg.planning()}) over {cfg.episodes} episodes"
    )
    base = EvalConfig(
        env=ENV, planner=planner, episodes=cfg.episodes, agents=cfg.episodes, steps=cfg.steps, seed=cfg.seed
    )
    tdm = base.replace(
        checkpoint=str(checkpoint), planner=cfg.tdm_planner_config(), greedy=cfg.greedy, servers=cfg.servers
    )
    results = {
        "tdm": evaluate(tdm, address),
        "ground_truth": evaluate(base.replace(model="ground-truth"), address),
        "random": evaluate(base.replace(model="random"), address),
    }
    wall = time.perf_counter() - start
    summary = {
        "env": ENV,
        "settings": dataclasses.asdict(cfg),
        "checkpoint": str(checkpoint),
        "results": results,
        "wall_s": wall,
    }
    (out / "demo.json").write_text(json.dumps(summary, indent=2))
    title = (
        f"{ENV}, {cfg.episodes} episodes of {cfg.steps} steps\n"
        f"K={cfg.samples}, N={cfg.horizon}, re-planning every {cfg.replan_every} steps\n{cfg.planning()}"
    )
    plot_comparison(results, out / "demo.png", title)
    return summary


SETTINGS = "settings.json"  # the BUILD settings of the dataset and model in a demo's folder


def check_reuse(cfg: DemoConfig, out: Path) -> None:
    """Refuse a folder whose dataset or model were made with other settings: a re-run would reuse them as they are
    (a model that cannot plan this horizon, data of another length) and report figures of other settings."""
    made = [p for p in (out / "data", out / "run") if p.exists()]
    if not made:
        return
    try:
        before = json.loads((out / SETTINGS).read_text())
    except (OSError, ValueError):
        raise ConfigError(
            f"{out} holds {' and '.join(str(p) for p in made)} of an earlier demo without {SETTINGS}; "
            f"delete {out} or use a new --out"
        ) from None
    changed = [f"{k} {before.get(k)} -> {now}" for k, now in cfg.build().items() if before.get(k) != now]
    if changed:
        raise ConfigError(
            f"{out} holds the data and model of a demo with other settings ({', '.join(changed)}); "
            f"delete {out} or use a new --out"
        )


def plot_comparison(results: dict[str, dict], path: Path, title: str) -> None:
    """Bar chart of mean return ± 68% CI per model, with each episode's return as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, ax = plt.subplots(figsize=(5, 3.8))
    means = [results[n]["mean_return"] for n in names]
    errors = [results[n]["ci68"] for n in names]
    ax.bar(names, means, yerr=errors, capsize=6, color=["tab:blue", "tab:green", "tab:gray"][: len(names)])
    for i, name in enumerate(names):
        returns = results[name]["returns"]
        ax.scatter([i] * len(returns), returns, color="black", s=12, zorder=3)
    ax.set_ylabel("episode return")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_summary(summary: dict) -> None:
    results = summary["results"]
    print(f"\n{'model':<14} {'mean return':>12} {'68% CI':>8}  per episode")
    for name, r in results.items():
        print(f"{name:<14} {r['mean_return']:>12.1f} {r['ci68']:>8.1f}  {', '.join(f'{x:.0f}' for x in r['returns'])}")
    gt, rnd = results["ground_truth"]["mean_return"], results["random"]["mean_return"]
    tdm = results["tdm"]["mean_return"]
    if gt > 0:
        print(
            f"TDM-MPC reaches {tdm / gt:.0%} of ground-truth MPC" + (f" and {tdm / rnd:.1f}x random" if rnd > 0 else "")
        )
    out = Path(summary["settings"]["out"])
    print(f"plot: {out / 'demo.png'}; results: {out / 'demo.json'}")
    print(f"demo tdm={tdm:.1f} ground_truth={gt:.1f} random={rnd:.1f} wall_s={summary['wall_s']:.0f}")
