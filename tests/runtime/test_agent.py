"""The agent's view of its episode: the history it sends, with and without an expert prompt."""

from __future__ import annotations

import numpy as np
import pytest

from tdm_dist.errors import ConfigError
from tdm_dist.runtime.agent import AgentConfig, _history, _prompt_arrays


def episode_arrays(steps: int, n: int = 3, m: int = 2, offset: float = 0.0):
    rng = np.random.default_rng(int(offset))
    obs = rng.normal(size=(steps + 1, n)).astype(np.float32) + offset
    rew = np.r_[0.0, rng.uniform(size=steps)].astype(np.float32)
    act = rng.uniform(-1, 1, size=(steps, m)).astype(np.float32)
    return obs, rew, act


def test_history_is_the_real_interaction_up_to_now_truncated_to_what_the_model_sees():
    obs, rew, act = episode_arrays(10)
    h = _history(None, obs, rew, act, t=6, keep=4)
    np.testing.assert_array_equal(h.observations, obs[3:7])
    np.testing.assert_array_equal(h.rewards, rew[3:7])
    np.testing.assert_array_equal(h.actions, act[3:6])  # one fewer than observations: it ends in o_t, r_t


def test_prompt_episode_comes_before_the_current_one():
    expert = dict(zip(("observations", "rewards", "actions"), episode_arrays(5, offset=100.0), strict=True))
    prompt = _prompt_arrays(expert, 3, 2)
    obs, rew, act = episode_arrays(10)
    h = _history(prompt, obs, rew, act, t=2, keep=100)
    assert h.observations.shape == (5 + 3, 3) and h.actions.shape == (5 + 2, 2)
    np.testing.assert_array_equal(h.observations[:5], expert["observations"][:5])
    np.testing.assert_array_equal(h.observations[5:], obs[:3])
    np.testing.assert_array_equal(h.actions[:5], expert["actions"])  # its last action leads into o_0
    with pytest.raises(ConfigError, match="prompt episode has dims"):
        _prompt_arrays(expert, 4, 2)


def test_bc_and_proposal_need_the_tdm():
    with pytest.raises(ConfigError, match="bc policy needs the TDM"):
        AgentConfig(env="cartpole-swingup", model="ground-truth", policy="bc").check()
    with pytest.raises(ConfigError, match="model must be one of"):
        AgentConfig(env="cartpole-swingup", model="oracle").check()
    with pytest.raises(ConfigError, match=r"steps must be in \[1, 1000\]"):
        AgentConfig(env="cartpole-swingup", steps=0).check()
