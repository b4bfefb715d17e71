"""Batched rollouts reproduce Env.step exactly and leave the env where it was."""

from __future__ import annotations

import numpy as np
import pytest

from tdm_dist import envs
from tdm_dist.envs.rollout import has_fast_path, rollout
from tdm_dist.errors import DataError

K, N = 3, 12


def advanced_envs(name: str, action_repeat: int = 1, steps: int = 20, copies: int = 3):
    """Envs some random steps into a seeded episode, all in exactly the same state."""
    copies = [envs.make(name, seed=0, action_repeat=action_repeat) for _ in range(copies)]
    rng = np.random.default_rng(0)
    for env in copies:
        env.reset(seed=1)
    for _ in range(steps):
        action = rng.uniform(-1, 1, copies[0].spec.act_dim)
        for env in copies:
            env.step(action)
    return copies


def stepped(env, actions: np.ndarray):
    """What env.step returns for each sequence, restarting every sequence from env's current state."""
    rewards, observations = np.zeros(actions.shape[:2]), np.zeros((*actions.shape[:2], env.spec.obs_dim))
    start = env.get_state()
    for k, sequence in enumerate(actions):
        env.set_state(start)
        for t, action in enumerate(sequence):
            observations[k, t], rewards[k, t], _ = env.step(action)
    return rewards, observations


def check_matches_env_step(name: str, action_repeat: int = 1, replay: bool = False):
    env, twin, reference = advanced_envs(name, action_repeat)
    actions = np.random.default_rng(1).uniform(-1.3, 1.3, (K, N, env.spec.act_dim))  # beyond the box: clipped
    before = env.physics.data.ptr
    state, warmstart = env.get_state(), before.qacc_warmstart.copy()
    rewards, observations = rollout(env, actions, observations=True, replay=replay)
    assert rewards.shape == (K, N) and observations.shape == (K, N, env.spec.obs_dim)
    np.testing.assert_array_equal(env.get_state(), state)
    np.testing.assert_array_equal(before.qacc_warmstart, warmstart)
    # the env continues exactly as its twin, which did no rollout
    action = np.full(env.spec.act_dim, 0.3)
    np.testing.assert_array_equal(env.step(action)[0], twin.step(action)[0])
    expected_rewards, expected_observations = stepped(reference, actions)
    np.testing.assert_allclose(rewards, expected_rewards, atol=1e-6, rtol=0)
    np.testing.assert_allclose(observations, expected_observations, atol=1e-6, rtol=0)
    assert observations.std(axis=0).max() > 1e-3  # the sequences lead to different places
    return observations


CARTPOLE = ["cartpole-swingup", "cartpole-balance_sparse", "cartpole-two_poles", "cartpole-three_poles"]


@pytest.mark.parametrize("name", [*CARTPOLE, "pendulum-swingup"])
def test_fast_path_matches_env_step(name):
    assert has_fast_path(envs.make(name, seed=0))
    check_matches_env_step(name)


def test_fast_path_with_action_repeat():
    check_matches_env_step("cartpole-swingup", action_repeat=3)


# walker uses 10 physics sub-steps per control step, hopper 4 and observes touch sensors (acceleration stage)
@pytest.mark.parametrize("name", ["walker-walk", "cheetah-run", "hopper-hop"])
def test_replay_matches_env_step(name):
    assert not has_fast_path(envs.make(name, seed=0))
    observations = check_matches_env_step(name)
    if name == "hopper-hop":  # the touch sensors fire, so the acceleration-stage sensors were compared
        touch = envs.make(name, seed=0).spec.obs_slices()["touch"]
        assert np.abs(observations[..., touch]).max() > 1


def test_replay_on_a_fast_task_with_action_repeat():
    check_matches_env_step("cartpole-swingup", action_repeat=2, replay=True)


def test_fast_rewards_only_and_threads():
    (env,) = advanced_envs("cartpole-swingup", copies=1)
    actions = np.random.default_rng(2).uniform(-1, 1, (8, 5, 1))
    rewards = rollout(env, actions)
    np.testing.assert_array_equal(rewards, rollout(env, actions, threads=2))
    np.testing.assert_allclose(rewards, rollout(env, actions, replay=True), atol=1e-12, rtol=0)


def test_bad_actions():
    env = envs.make("cartpole-swingup", seed=0)
    env.reset(seed=0)
    with pytest.raises(DataError, match=r"\[K, N, 1\]"):
        rollout(env, np.zeros((4, 1)))
    with pytest.raises(DataError, match="finite"):
        rollout(env, np.full((1, 2, 1), np.nan))
