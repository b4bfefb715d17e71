"""``Env``: one environment instance with flat observations, actions in [-1, 1] and a fixed episode length."""

from __future__ import annotations

import numpy as np

from tdm_dist.envs.spec import EnvSpec
from tdm_dist.errors import DataError

# Action bounds wider than this are treated as unbounded (lqr's ±1e10): actions pass through unscaled.
_MAX_FINITE_BOUND = 1e3


class Env:
    """A dm_control environment behind the project's conventions.

    Observations are flattened in the spec's key order (float64); actions are clipped to [-1, 1] and
    mapped affinely onto the task's own bounds; an episode ends after ``spec.episode_length`` steps.
    """

    def __init__(self, dm_env, spec: EnvSpec):
        self.dm_env, self.spec = dm_env, spec
        bounds = dm_env.action_spec()
        lo, hi = np.broadcast_to(bounds.minimum, bounds.shape), np.broadcast_to(bounds.maximum, bounds.shape)
        rescale = np.all(np.abs(np.r_[lo, hi]) <= _MAX_FINITE_BOUND) and not (np.all(lo == -1) and np.all(hi == 1))
        self._scale = (hi - lo) / 2 if rescale else np.ones(spec.act_dim)
        self._offset = (hi + lo) / 2 if rescale else np.zeros(spec.act_dim)
        self.steps = 0

    @property
    def physics(self):
        return self.dm_env.physics

    def _flatten(self, observation) -> np.ndarray:
        return np.concatenate([np.asarray(observation[k], dtype=np.float64).ravel() for k, _ in self.spec.obs_keys])

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Start an episode; with a seed, the task's initial-state randomness is reproducible."""
        if seed is not None:
            self.dm_env.task.random.seed(seed)
        self.steps = 0
        return self._flatten(self.dm_env.reset().observation)

    def step(self, action) -> tuple[np.ndarray, float, bool]:
        """Apply ``action`` [m] for ``spec.action_repeat`` simulator steps -> (next_obs, reward, done)."""
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (self.spec.act_dim,):
            raise DataError(f"action for {self.spec.name} must have shape ({self.spec.act_dim},), got {action.shape}")
        if not np.all(np.isfinite(action)):
            raise DataError(f"action for {self.spec.name} must be finite, got {action}")
        native = self._offset + self._scale * np.clip(action, -1.0, 1.0)
        reward = 0.0
        for _ in range(self.spec.action_repeat):
            ts = self.dm_env.step(native)
            reward += float(ts.reward or 0.0)
        self.steps += 1
        return self._flatten(ts.observation), reward, self.steps >= self.spec.episode_length

    def get_state(self) -> np.ndarray:
        """The simulator state (qpos, qvel, act), enough to replay from here in this instance."""
        return np.concatenate([self.physics.get_state(), [self.steps]])

    def set_state(self, state: np.ndarray) -> None:
        with self.physics.reset_context():
            self.physics.set_state(np.asarray(state[:-1]))
        self.steps = int(state[-1])

    def observation(self) -> np.ndarray:
        """The observation of the current simulator state."""
        return self._flatten(self.dm_env.task.get_observation(self.physics))
