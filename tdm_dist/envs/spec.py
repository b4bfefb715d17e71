"""``EnvSpec``: what a model and a planner need to know about an environment, as plain data."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from tdm_dist.errors import ConfigError, DataError


@dataclass(frozen=True)
class EnvSpec:
    name: str  # registry name, e.g. "cartpole-swingup"
    obs_keys: tuple[tuple[str, int], ...]  # flattening order of the observation dict: (key, entries)
    act_dim: int  # action entries; actions live in [-1, 1]
    control_timestep: float  # seconds of simulated time per environment step (with action repeat)
    episode_length: int = 1000  # environment steps per episode
    action_repeat: int = 1  # simulator steps per environment step
    has_reward_from_obs: bool = False  # whether reward_from_obs(next_obs, action) reproduces the env reward
    reward_note: str = ""  # why the reward is not (exactly) a function of the observation, when it is not

    @property
    def obs_dim(self) -> int:
        return sum(size for _, size in self.obs_keys)

    def obs_slices(self) -> dict[str, slice]:
        """Where each observation key sits in the flat observation vector."""
        out, start = {}, 0
        for key, size in self.obs_keys:
            out[key] = slice(start, start + size)
            start += size
        return out

    @property
    def velocity_mask(self) -> np.ndarray:
        """[obs_dim] bool: entries that are velocities (left out of the prediction-error metric, App. G).

        A key counts as a velocity when its name says so ("vel") or it holds inertial sensors (gyro and
        accelerometer readings are derivatives too).
        """
        return np.concatenate(
            [np.full(size, "vel" in key or key in ("imu", "inertial_sensors")) for key, size in self.obs_keys]
        ).astype(bool)

    def check_observations(self, obs: np.ndarray, what: str = "observations") -> None:
        """Raise ``DataError`` if ``obs`` [..., n] does not have this env's observation dimension."""
        if obs.shape[-1] != self.obs_dim:
            raise DataError(f"{what} have {obs.shape[-1]} entries, {self.name} expects {self.obs_dim}")

    def check_actions(self, action: np.ndarray, what: str = "action") -> None:
        if action.shape[-1] != self.act_dim:
            raise DataError(f"{what} has {action.shape[-1]} entries, {self.name} expects {self.act_dim}")

    def episode_steps(self, steps: int | None, what: str = "steps") -> int:
        """The steps an episode runs: ``steps``, or the whole episode for ``None``; ``ConfigError`` naming ``what``
        unless 1 <= steps <= the episode length."""
        if steps is None:
            return self.episode_length
        if isinstance(steps, bool) or int(steps) != steps or not 1 <= steps <= self.episode_length:
            raise ConfigError(
                f"{what} must be in [1, {self.episode_length}] (the episode length of {self.name}), got {steps!r}"
            )
        return int(steps)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["obs_keys"] = [list(k) for k in self.obs_keys]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> EnvSpec:
        try:
            return cls(**{**d, "obs_keys": tuple((str(k), int(s)) for k, s in d["obs_keys"])})
        except (KeyError, TypeError) as e:
            raise ConfigError(f"not an EnvSpec: {d!r} ({e})") from None
