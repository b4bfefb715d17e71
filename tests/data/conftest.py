"""Fixtures of the data tests: synthetic episodes of real env specs, one small dataset, one Ray instance."""

from __future__ import annotations

import numpy as np
import pytest

from tdm_dist.data import EpisodeWriter
from tdm_dist.envs import spec

ENVS = ("cartpole-swingup", "walker-stand")  # obs_dim 5 / act_dim 1 and 24 / 6


def synthetic_episode(env: str, episode_id: int, steps: int = 50, seed: int = 0) -> dict:
    """A random episode with ``env``'s real spec (no expert is run)."""
    s = spec(env)
    rng = np.random.default_rng([seed, episode_id, len(env)])
    rewards = rng.uniform(0, 1, steps + 1).astype(np.float32)
    rewards[0] = 0.0
    return {
        "env": env,
        "episode_id": episode_id,
        "seed": 1000 + episode_id,
        "observations": rng.normal(0, 2, (steps + 1, s.obs_dim)).astype(np.float32),
        "actions": rng.uniform(-1, 1, (steps, s.act_dim)).astype(np.float32),
        "rewards": rewards,
        "expert": "random",
        "expert_settings": {"noise": 0.5},
        "spec": s,
    }


@pytest.fixture
def make_episode():
    return synthetic_episode


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    """Root of a read-only two-env dataset: 6 episodes per env of 40...65 steps, plus a 3-step one."""
    root = tmp_path_factory.mktemp("episodes")
    with EpisodeWriter(root, rows_per_file=4) as w:
        for env in ENVS:
            w.write(synthetic_episode(env, i, steps=40 + 5 * i) for i in range(6))
            w.add(synthetic_episode(env, 6, steps=3))
    return root
