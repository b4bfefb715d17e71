"""The ground-truth model as a planner: MPC on simulator rollouts (paper §5.1), the expert that makes training data.

``GroundTruthExpert.act(env)`` scores candidate action sequences by the rewards the simulator itself returns
from the env's current state (``envs.rollout``), so it is the reference every learned model is compared with.
``random_policy`` is the random expert; ``run_episode`` plays one episode with either and records it in the
layout of DESIGN's Sequence layout.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from tqdm.auto import tqdm

from tdm_dist.envs.env import Env
from tdm_dist.envs.rollout import rollout
from tdm_dist.envs.spec import EnvSpec
from tdm_dist.errors import ConfigError
from tdm_dist.planning.optimizers import MPCPlanner, PlannerConfig


def expert_planner(seed: int | None = None) -> PlannerConfig:
    """The expert's planner: iCEM with Brownian noise, a 1.5 s horizon, re-planning every 8 steps.

    Cartpole-swingup needs the long horizon: with N <= 50 (0.5 s) the planners swing the pole up but then let the
    cart drift into the end of its rail. The simulator is deterministic, so running 8 planned actions open loop
    costs little. Measured on 2 CPU cores (one simulator thread): mean return 823 over 4 seeded 1000-step episodes,
    13 s per episode; ``samples=64`` gives 834 at ~25 s, ``horizon=50`` re-planning every step fails (384, 85 s).
    """
    return PlannerConfig(
        kind="cem",
        samples=32,
        horizon=150,
        beta=2.0,
        variance=0.5,
        iterations=3,
        elites=8,
        warm_start=True,
        replan_every=8,
        seed=seed,
    )


class Policy(Protocol):
    def reset(self, seed: int | None = None) -> None: ...

    def act(self, env: Env) -> np.ndarray: ...


class GroundTruthExpert:
    """MPC with the simulator as the model: the objective of a sequence is the sum of its rollout rewards.

    ``action_noise``: std of Gaussian noise added to every planned action (expert-plus-noise data), then clipped.
    ``threads``: simulator threads per rollout (fast path only).
    """

    def __init__(
        self,
        spec: EnvSpec,
        planner: PlannerConfig | None = None,
        action_noise: float = 0.0,
        seed: int | None = None,
        threads: int = 1,
    ):
        if not (np.isfinite(action_noise) and action_noise >= 0):
            raise ConfigError(f"action_noise must be a std >= 0, got {action_noise}")
        self.spec, self.action_noise, self.threads = spec, action_noise, threads
        self.planner = MPCPlanner(planner or expert_planner(seed), spec.act_dim)
        self.rng = np.random.default_rng(seed)

    def reset(self, seed: int | None = None) -> None:
        self.planner.reset(seed)
        if seed is not None:
            self.rng = np.random.default_rng([seed, 1])  # independent of the planner's stream

    def act(self, env: Env) -> np.ndarray:
        """-> action [m] in [-1, 1] for the env's current state; leaves the env's state unchanged."""
        action = self.planner.plan(lambda actions: rollout(env, actions, threads=self.threads).sum(axis=1))
        if self.action_noise > 0:
            action = np.clip(action + self.action_noise * self.rng.standard_normal(action.shape), -1.0, 1.0)
        return action


class RandomPolicy:
    """Actions drawn uniformly from [-1, 1]^m at every step, independent of the state."""

    def __init__(self, spec: EnvSpec, rng: np.random.Generator):
        self.spec, self.rng = spec, rng

    def reset(self, seed: int | None = None) -> None:
        if seed is not None:
            self.rng = np.random.default_rng(seed)

    def act(self, env: Env) -> np.ndarray:
        return self.rng.uniform(-1.0, 1.0, size=self.spec.act_dim)


def random_policy(spec: EnvSpec, rng: np.random.Generator) -> RandomPolicy:
    """The random expert."""
    return RandomPolicy(spec, rng)


def run_episode(
    env: Env, policy: Policy, seed: int | None = None, steps: int | None = None, progress: bool = False
) -> dict:
    """Play one episode (``steps`` or the spec's episode length) -> the recorded episode.

    observations [T+1, n] float32 (o_0 .. o_T), actions [T, m] float32, rewards [T+1] float32 with rewards[0] = 0
    (rewards[t] came with observations[t], DESIGN's Sequence layout), and ``return``, their sum (float).
    """
    length = env.spec.episode_steps(steps)
    observations, actions, rewards = [env.reset(seed)], [], [0.0]
    policy.reset(seed)
    for _ in tqdm(range(length), desc=env.spec.name, disable=not progress, leave=False):
        action = np.asarray(policy.act(env), dtype=np.float64)
        obs, reward, _ = env.step(action)
        observations.append(obs), actions.append(action), rewards.append(reward)
    return {
        "observations": np.asarray(observations, dtype=np.float32),
        "actions": np.asarray(actions, dtype=np.float32),
        "rewards": np.asarray(rewards, dtype=np.float32),
        "return": float(np.sum(rewards)),
    }
