"""The dm_control suite tasks (paper §4.3.1) and their randomized variants: loading and their ``EnvSpec``."""

from __future__ import annotations

import functools

import numpy as np

from tdm_dist.envs import randomized
from tdm_dist.envs.env import Env
from tdm_dist.envs.rewards import REWARDS
from tdm_dist.envs.spec import EnvSpec

EPISODE_LENGTH = 1000  # environment steps per episode, as in the paper


def task_names() -> list[str]:
    """``domain-task`` for every task of ``dm_control.suite.ALL_TASKS``, in the suite's order."""
    from dm_control import suite

    return [f"{domain}-{task}" for domain, task in suite.ALL_TASKS]


def _domain(name: str) -> str:
    return randomized.base_name(name).split("-", 1)[0]


_REWARD_NOTES: dict[str, str] = {}  # domain -> why its rewards are not functions of the observation


@functools.lru_cache
def spec(name: str, action_repeat: int = 1) -> EnvSpec:
    """The ``EnvSpec`` of a suite task or a randomized variant (``walker-stand@rand3``), read off the loaded
    environment; a variant has its base task's keys and dimensions under its own name."""
    env = randomized.load(name, seed=0)
    obs_keys = tuple((k, int(np.prod(v.shape))) for k, v in env.observation_spec().items())
    return EnvSpec(
        name=name,
        obs_keys=obs_keys,
        act_dim=int(np.prod(env.action_spec().shape)),
        control_timestep=float(env.control_timestep()) * action_repeat,
        episode_length=EPISODE_LENGTH // action_repeat,  # dm_control's time limit counts simulator steps
        action_repeat=action_repeat,
        has_reward_from_obs=randomized.base_name(name) in REWARDS and action_repeat == 1,
        reward_note=_reward_note(name, action_repeat),
    )


def _reward_note(name: str, action_repeat: int) -> str:
    if randomized.base_name(name) not in REWARDS:
        return _REWARD_NOTES.get(_domain(name), "the reward depends on state that is not observed")
    if action_repeat > 1:
        return "with action repeat the reward sums several simulator steps, only the last is observed"
    return ""


def make(name: str, seed: int | None = None, action_repeat: int = 1) -> Env:
    return Env(randomized.load(name, seed), spec(name, action_repeat))
