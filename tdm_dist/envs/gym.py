"""``GymEnv``: a registry environment behind the gymnasium API, for RL libraries (RLlib's SAC expert).

Observations are float32 of ``spec.obs_dim`` entries (unbounded), actions live in [-1, 1]^m; an episode never
terminates, it is truncated after ``spec.episode_length`` steps.
"""

from __future__ import annotations

from collections.abc import Mapping

import gymnasium
import numpy as np

from tdm_dist import envs
from tdm_dist.errors import ConfigError


class GymEnv(gymnasium.Env):
    metadata = {"render_modes": []}  # noqa: RUF012 (gymnasium's own class attribute)

    def __init__(self, name: str, seed: int | None = None, action_repeat: int = 1):
        self.env = envs.make(name, seed=seed, action_repeat=action_repeat)
        # ``self.spec`` is gymnasium's registration record (``gymnasium.make`` sets it); ours is ``self.env.spec``.
        self.observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (self.env.spec.obs_dim,), np.float32)
        self.action_space = gymnasium.spaces.Box(-1.0, 1.0, (self.env.spec.act_dim,), np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        return self.env.reset(seed).astype(np.float32), {}

    def step(self, action) -> tuple[np.ndarray, float, bool, bool, dict]:
        obs, reward, done = self.env.step(np.asarray(action, dtype=np.float64))
        return obs.astype(np.float32), float(reward), False, bool(done), {}

    def close(self) -> None:
        self.env.dm_env.close()


def make_gym_env(config: Mapping) -> GymEnv:
    """RLlib's env creator: ``config.environment(env=make_gym_env, env_config={"name": ..., "action_repeat": ...})``.

    RLlib passes its ``EnvContext`` (the ``env_config`` dict plus the worker index); seeding is left to RLlib,
    which resets each env with its own seed.
    """
    if "name" not in config:
        raise ConfigError(f"env_config needs the environment's registry name under 'name', got {dict(config)!r}")
    return GymEnv(str(config["name"]), config.get("seed"), int(config.get("action_repeat", 1)))
