"""reward_from_obs against the environment's own reward on real transitions with random actions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dm_control.utils import rewards as dm_rewards

from tdm_dist import envs
from tdm_dist.envs.rewards import REWARDS, tolerance


def real_transitions(name: str, episodes: int = 100, steps: int = 3, long_steps: int = 300):
    """(next_obs [T, n], action [T, m], reward [T]) from many short seeded episodes, so that the
    initial-state randomization covers the rewarding region, and one long one, which leaves it."""
    env = envs.make(name, seed=0)
    rng = np.random.default_rng(0)
    obs, act, rew = [], [], []
    for episode in range(episodes + 1):
        env.reset(seed=episode)
        for _ in range(steps if episode < episodes else long_steps):
            a = rng.uniform(-1, 1, size=env.spec.act_dim)
            o, r, _ = env.step(a)
            obs.append(o), act.append(a), rew.append(r)
    return np.array(obs), np.array(act), np.array(rew)


# Random actions from the initial states never reach the rewarding region of these tasks.
NEVER_REWARDED = {"cartpole-swingup_sparse"}


@pytest.mark.parametrize("name", sorted(REWARDS))
def test_reward_from_obs_matches_env(name):
    obs, act, rew = real_transitions(name)
    assert len(rew) >= 200
    fn = envs.reward_fn(name)
    np.testing.assert_allclose(fn(obs, act), rew, atol=1e-4, rtol=0)
    torch_rew = fn(torch.from_numpy(obs), torch.from_numpy(act))
    assert isinstance(torch_rew, torch.Tensor) and torch_rew.shape == (len(rew),)
    np.testing.assert_allclose(torch_rew.numpy(), rew, atol=1e-4, rtol=0)
    np.testing.assert_allclose(fn(obs[None, :10], act[None, :10])[0], rew[:10], atol=1e-4)  # leading dims
    if name not in NEVER_REWARDED:
        # the transitions must exercise the function: rewards that vary, some above zero
        assert rew.max() > 0 and np.unique(rew).size > 1, "the transitions barely vary: the test would prove little"


@pytest.mark.parametrize("sigmoid", ["gaussian", "linear", "quadratic"])
@pytest.mark.parametrize("bounds,margin", [((0, 0), 1.0), ((-0.25, 0.25), 0.0), ((1.2, float("inf")), 0.6)])
def test_torch_tolerance_matches_dm_control(sigmoid, bounds, margin):
    x = np.linspace(-4, 4, 801)
    expected = dm_rewards.tolerance(x, bounds, margin, sigmoid, value_at_margin=0.1 if sigmoid == "gaussian" else 0)
    got = tolerance(torch.from_numpy(x), bounds, margin, sigmoid, value_at_margin=0.1 if sigmoid == "gaussian" else 0)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-12)


def test_tasks_without_reward_from_obs_say_why():
    spec = envs.spec("cheetah-run") if "cheetah-run" not in REWARDS else envs.spec("finger-spin")
    assert not spec.has_reward_from_obs and spec.reward_note
    with pytest.raises(envs.registry.ConfigError, match="predicted rewards"):
        envs.reward_fn(spec.name)
