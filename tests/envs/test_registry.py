"""The environment registry: every suite task by name, its EnvSpec, and the Env wrapper."""

from __future__ import annotations

import numpy as np
import pytest
from dm_control import suite

from tdm_dist import envs
from tdm_dist.errors import ConfigError, DataError


def test_every_suite_task_is_registered():
    names = envs.names()
    assert len(names) >= 28
    assert {f"{d}-{t}" for d, t in suite.ALL_TASKS} == set(names)
    assert {"cartpole-swingup", "walker-stand", "humanoid-stand"} <= set(names)


def test_unknown_names_list_close_matches():
    with pytest.raises(ConfigError, match="did you mean cartpole-swingup"):
        envs.spec("cartpole-swingupp")
    with pytest.raises(ConfigError, match=r"unknown environment 'zzz'.*tdm envs"):
        envs.make("zzz")


def test_spec_describes_the_environment():
    spec = envs.spec("cartpole-swingup")
    assert (spec.obs_dim, spec.act_dim) == (5, 1)
    assert spec.obs_keys == (("position", 3), ("velocity", 2))
    assert spec.velocity_mask.tolist() == [False, False, False, True, True]
    assert spec.control_timestep == pytest.approx(0.01) and spec.episode_length == 1000
    assert spec.has_reward_from_obs
    assert envs.EnvSpec.from_dict(spec.to_dict()) == spec
    walker = envs.spec("walker-walk", action_repeat=2)
    assert walker.control_timestep == pytest.approx(0.05) and not walker.has_reward_from_obs


@pytest.mark.parametrize("name", ["cartpole-swingup", "procwalker-chain-0"])
def test_an_episode_with_action_repeat_ends_inside_the_simulators_time_limit(name):
    # dm_control ends an episode after 1000 simulator steps and resets itself on the next step: an episode of
    # spec.episode_length steps of 3 simulator steps each must end before that, not run on into a fresh episode.
    env = envs.make(name, seed=0, action_repeat=3)
    assert env.spec.episode_length == 333
    env.reset(seed=0)
    for _ in range(env.spec.episode_length):
        env.step(np.zeros(env.spec.act_dim))
    assert env.physics.data.time == pytest.approx(999 * env.dm_env.control_timestep())


def test_env_flattens_observations_in_spec_order_and_steps():
    env = envs.make("walker-stand", seed=0)
    obs = env.reset(seed=1)
    assert obs.shape == (env.spec.obs_dim,) == (24,)
    raw = env.dm_env.task.get_observation(env.physics)
    np.testing.assert_array_equal(obs[:14], raw["orientations"])
    assert obs[14] == raw["height"]
    next_obs, reward, done = env.step(np.zeros(6))
    assert next_obs.shape == (24,) and 0 <= reward <= 1 and not done


def test_reset_with_a_seed_is_reproducible():
    a, b = envs.make("cartpole-swingup"), envs.make("cartpole-swingup")
    np.testing.assert_array_equal(a.reset(seed=7), b.reset(seed=7))
    assert not np.array_equal(a.reset(seed=7), a.reset(seed=8))


def test_state_round_trip_replays_the_same_transition():
    env = envs.make("cheetah-run", seed=0)
    env.reset(seed=0)
    for _ in range(5):
        env.step(np.full(6, 0.3))
    state = env.get_state()
    first = env.step(np.full(6, -0.5))
    env.set_state(state)
    second = env.step(np.full(6, -0.5))
    # equal up to the solver's warm start, which the state leaves out
    np.testing.assert_allclose(first[0], second[0], atol=1e-8)
    assert first[1] == pytest.approx(second[1], abs=1e-8) and env.steps == 6  # the step counter is part of the state


def test_episode_ends_after_episode_length_steps():
    env = envs.make("pendulum-swingup", seed=0)
    env.reset(seed=0)
    dones = [env.step(np.zeros(1))[2] for _ in range(env.spec.episode_length)]
    assert dones[-1] and not any(dones[:-1])


def test_actions_are_mapped_onto_the_task_bounds():
    env = envs.make("quadruped-walk", seed=0)  # some actuator ranges are not [-1, 1]
    bounds = env.dm_env.action_spec()
    env.reset(seed=0)
    env.step(np.ones(env.spec.act_dim))
    np.testing.assert_allclose(env.physics.data.ctrl, bounds.maximum)
    env.step(-np.full(env.spec.act_dim, 3.0))  # clipped to -1 first
    np.testing.assert_allclose(env.physics.data.ctrl, bounds.minimum)


def test_bad_actions_are_rejected():
    env = envs.make("cartpole-swingup", seed=0)
    env.reset(seed=0)
    with pytest.raises(DataError, match=r"shape \(1,\)"):
        env.step(np.zeros(2))
    with pytest.raises(DataError, match="finite"):
        env.step(np.array([np.nan]))


def test_expand_reads_lists_and_inclusive_ranges_in_order():
    assert envs.expand("cartpole-swingup") == ["cartpole-swingup"]
    assert envs.expand("procwalker-chain-8..11, cartpole-swingup,walker-stand@rand1..2:0.3") == [
        "procwalker-chain-0008",
        "procwalker-chain-0009",
        "procwalker-chain-0010",
        "procwalker-chain-0011",
        "cartpole-swingup",
        "walker-stand@rand1:0.3",
        "walker-stand@rand2:0.3",
    ]
    # two spellings of one procedural body are one environment
    assert envs.expand("procwalker-tree-7,procwalker-tree-0007,procwalker-tree-6..7") == [
        "procwalker-tree-0007",
        "procwalker-tree-0006",
    ]


@pytest.mark.parametrize(
    "text, message",
    [
        ("cartpole-swingup,,walker-stand", "empty environment name"),
        ("procwalker-chain-5..2", r"empty range 5\.\.2"),
        ("procwalker-chain-0..999999", "at most 100000 at once"),
        ("procwalker-blob-0..3", "unknown procedural walker family 'blob'"),
        ("cartpole-swingup,walker-stnd", "did you mean walker-stand"),
    ],
)
def test_expand_rejects_bad_names_naming_the_part(text, message):
    with pytest.raises(ConfigError, match=message):
        envs.expand(text)
