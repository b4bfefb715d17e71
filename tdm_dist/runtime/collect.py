"""``tdm collect``: expert episodes from EnvWorker actors into a Parquet dataset, resumable.

Episode ``i`` of a dataset always uses the seed ``seed * 1_000_000 + i``, so a re-run with the same
command collects only the missing episode ids and produces the same episodes it would have the first
time. Each finished episode goes to the writer at once; files appear complete or not at all.

``env`` may name many environments (``procwalker-chain-0..99``, ``a,b``; see ``envs.expand``): every one
gets episode ids 0..episodes-1 in its own partition of the one dataset, whatever its dimensions. The
workers are not tied to one environment: each switches to the environment of the episode it is given.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from tdm_dist import envs
from tdm_dist.errors import ConfigError
from tdm_dist.runtime.cluster import init_ray
from tdm_dist.runtime.env_worker import ExpertConfig, remote_env_worker


@dataclass
class CollectConfig:
    env: str  # environment name(s): "cartpole-swingup", "a,b", "procwalker-chain-0..99" (envs.expand)
    episodes: int  # episode ids 0..episodes-1 of every environment end up in the dataset
    out: str  # dataset root (Parquet, partitioned by env)
    expert: ExpertConfig = field(default_factory=ExpertConfig)  # who acts
    workers: int = 2  # EnvWorker actors collecting in parallel
    seed: int = 0  # dataset seed; episode i uses seed * 1_000_000 + i
    rows_per_file: int = 8  # episodes per Parquet file
    steps: int | None = None  # env steps per episode (None: each env's whole episode); fewer spend the budget
    # on the start of the task, a swing-up rather than the balancing that follows it

    @property
    def envs(self) -> list[str]:
        return envs.expand(self.env)

    def check(self) -> None:
        envs.expand(self.env)  # unknown names list close matches
        if self.episodes < 1:
            raise ConfigError(f"--episodes must be >= 1, got {self.episodes}")
        if self.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {self.workers}")
        if self.steps is not None:  # a spec can cost a MuJoCo build: 10,000 procedural walkers take minutes
            for name in self.envs:
                envs.spec(name).episode_steps(self.steps, "--steps")
        if self.expert.kind == "rllib":
            from tdm_dist.runtime.rllib_expert import RLlibPolicy

            RLlibPolicy(self.expert.checkpoint)  # a bad checkpoint fails here, before any actor starts
        if self.expert.action_noise < 0:
            raise ConfigError(f"--action-noise must be >= 0, got {self.expert.action_noise}")
        if self.expert.kind != "gt-mpc" and (self.expert.action_noise or self.expert.planner):
            raise ConfigError(
                f"--action-noise, --samples and --horizon apply to the gt-mpc expert, not {self.expert.kind}"
            )
        if self.expert.kind == "gt-mpc":
            from tdm_dist.planning.ground_truth import expert_planner

            expert_planner().replace(**self.expert.planner)  # bad planner settings fail here, not in an actor


def episode_seed(seed: int, episode_id: int) -> int:
    return seed * 1_000_000 + episode_id


def collect(cfg: CollectConfig, address: str | None = None, progress: bool = True) -> dict:
    """Collect the missing episodes of ``cfg``; returns {collected, skipped, mean_return, envs}."""
    from ray.util import ActorPool

    from tdm_dist.data import EpisodeWriter, existing_ids

    cfg.check()
    names = cfg.envs
    todo, skipped = [], 0
    for env in names:  # grouped by env, so a worker switches environments rarely
        done = existing_ids(cfg.out, env)
        skipped += len(done)
        todo += [(env, i) for i in range(cfg.episodes) if i not in done]
    result = {"collected": 0, "skipped": skipped, "mean_return": float("nan"), "envs": len(names)}
    if not todo:
        return result
    init_ray(address)
    # A crashed worker is restarted and its episode retried: episodes are deterministic given their seed.
    Worker = remote_env_worker(max_restarts=2, max_task_retries=2)
    pool = ActorPool([Worker.remote(todo[0][0]) for _ in range(min(cfg.workers, len(todo)))])
    returns = []
    what = names[0] if len(names) == 1 else f"{len(names)} envs"
    bar = tqdm(total=len(todo), desc=f"collecting {what}", unit="episode", disable=not progress)
    with EpisodeWriter(cfg.out, rows_per_file=cfg.rows_per_file) as writer:
        episodes = pool.map_unordered(
            lambda worker, job: worker.collect_episode.remote(
                job[1], episode_seed(cfg.seed, job[1]), cfg.expert, env=job[0], steps=cfg.steps
            ),
            todo,
        )
        for episode in episodes:
            writer.add(episode)
            returns.append(episode["return"])
            bar.update()
            bar.set_postfix(mean_return=f"{np.mean(returns):.1f}")
    bar.close()
    return {**result, "collected": len(returns), "mean_return": float(np.mean(returns))}
