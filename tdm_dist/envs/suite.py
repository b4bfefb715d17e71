"""The dm_control suite tasks (paper §4.3.1): loading and their ``EnvSpec``."""

from __future__ import annotations

import functools

import numpy as np

from tdm_dist.envs.env import Env
from tdm_dist.envs.rewards import REWARDS
from tdm_dist.envs.spec import EnvSpec

EPISODE_LENGTH = 1000  # environment steps per episode, as in the paper


def task_names() -> list[str]:
    """``domain-task`` for every task of ``dm_control.suite.ALL_TASKS``, in the suite's order."""
    from dm_control import suite

    return [f"{domain}-{task}" for domain, task in suite.ALL_TASKS]


def _split(name: str) -> tuple[str, str]:
    domain, task = name.split("-", 1)
    return domain, task


def _load(name: str, seed: int | None):
    from dm_control import suite

    domain, task = _split(name)
    return suite.load(domain, task, task_kwargs={"random": seed})


_REWARD_NOTES: dict[str, str] = {}  # domain -> why its rewards are not functions of the observation


@functools.lru_cache
def spec(name: str, action_repeat: int = 1) -> EnvSpec:
    """The ``EnvSpec`` of a suite task, read off the loaded environment."""
    env = _load(name, seed=0)
    obs_keys = tuple((k, int(np.prod(v.shape))) for k, v in env.observation_spec().items())
    return EnvSpec(
        name=name,
        obs_keys=obs_keys,
        act_dim=int(np.prod(env.action_spec().shape)),
        control_timestep=float(env.control_timestep()) * action_repeat,
        episode_length=EPISODE_LENGTH,
        action_repeat=action_repeat,
        has_reward_from_obs=name in REWARDS and action_repeat == 1,
        reward_note=_reward_note(name, action_repeat),
    )


def _reward_note(name: str, action_repeat: int) -> str:
    if name not in REWARDS:
        return _REWARD_NOTES.get(_split(name)[0], "the reward depends on state that is not observed")
    if action_repeat > 1:
        return "with action repeat the reward sums several simulator steps, only the last is observed"
    return ""


def make(name: str, seed: int | None = None, action_repeat: int = 1) -> Env:
    return Env(_load(name, seed), spec(name, action_repeat))
