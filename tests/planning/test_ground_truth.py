"""The ground-truth expert, the random expert and the episode recorder."""

from __future__ import annotations

import numpy as np
import pytest

from tdm_dist import envs
from tdm_dist.errors import ConfigError
from tdm_dist.planning.ground_truth import GroundTruthExpert, expert_planner, random_policy, run_episode


def test_expert_beats_random_on_cartpole_swingup():
    env = envs.make("cartpole-swingup", seed=0)
    # the pole is up after ~150 steps: the expert's 200-step return is ~70, a random policy's ~1
    expert = run_episode(env, GroundTruthExpert(env.spec, expert_planner()), seed=0, steps=200)
    random = run_episode(env, random_policy(env.spec, np.random.default_rng(0)), seed=0, steps=200)
    assert expert["return"] > 50 > 10 * random["return"]


def test_episode_layout():
    env = envs.make("cartpole-swingup", seed=0)
    ep = run_episode(env, random_policy(env.spec, np.random.default_rng(0)), seed=3, steps=5)
    assert ep["observations"].shape == (6, env.spec.obs_dim) and ep["observations"].dtype == np.float32
    assert ep["actions"].shape == (5, 1) and ep["actions"].dtype == np.float32
    assert ep["rewards"].shape == (6,) and ep["rewards"].dtype == np.float32 and ep["rewards"][0] == 0
    assert ep["return"] == pytest.approx(ep["rewards"].sum(), rel=1e-6)
    np.testing.assert_array_equal(ep["observations"][0], env.reset(seed=3).astype(np.float32))
    again = run_episode(env, random_policy(env.spec, np.random.default_rng(9)), seed=3, steps=5)
    np.testing.assert_array_equal(again["actions"], ep["actions"])  # the seed fixes the policy too


def test_expert_is_seeded_leaves_env_alone_and_adds_noise():
    env = envs.make("cartpole-swingup", seed=0)
    cfg = expert_planner().replace(samples=8, horizon=20, replan_every=1)
    env.reset(seed=0)
    state = env.get_state()
    quiet, noisy = GroundTruthExpert(env.spec, cfg), GroundTruthExpert(env.spec, cfg, action_noise=0.3)
    quiet.reset(seed=1), noisy.reset(seed=1)
    a, b = quiet.act(env), noisy.act(env)
    np.testing.assert_array_equal(env.get_state(), state)
    assert a.shape == (1,) and np.all(np.abs(b) <= 1) and not np.array_equal(a, b)
    again = GroundTruthExpert(env.spec, cfg)
    again.reset(seed=1)
    np.testing.assert_array_equal(again.act(env), a)


def test_bad_arguments():
    env = envs.make("cartpole-swingup", seed=0)
    with pytest.raises(ConfigError, match="action_noise"):
        GroundTruthExpert(env.spec, action_noise=-1.0)
    with pytest.raises(ConfigError, match="steps"):
        run_episode(env, random_policy(env.spec, np.random.default_rng(0)), steps=0)
