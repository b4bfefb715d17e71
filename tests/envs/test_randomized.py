"""Randomized suite variants (``walker-stand@rand3``): same spec, other physics, same reward function."""

from __future__ import annotations

import numpy as np
import pytest

from tdm_dist import envs
from tdm_dist.envs import randomized
from tdm_dist.errors import ConfigError
from tests.envs.test_rewards import real_transitions

SCALED = ("body_mass", "geom_size", "geom_friction", "dof_damping", "actuator_gear")


def parameters(env) -> dict[str, np.ndarray]:
    model = env.physics.model
    return {key: np.array(getattr(model, key)) for key in SCALED}


def test_a_variant_has_its_base_tasks_spec_under_its_own_name():
    base, variant = envs.spec("walker-stand"), envs.spec("walker-stand@rand3")
    assert variant.name == "walker-stand@rand3"
    assert (variant.obs_keys, variant.act_dim, variant.control_timestep) == (
        base.obs_keys,
        base.act_dim,
        base.control_timestep,
    )
    assert variant.has_reward_from_obs
    assert envs.make("walker-stand@rand3", seed=0).reset(seed=0).shape == (base.obs_dim,)


def test_factors_are_deterministic_per_seed_and_within_the_spread():
    base = parameters(envs.make("walker-walk", seed=0))
    first, again = (
        parameters(envs.make("walker-walk@rand5", seed=0)),
        parameters(envs.make("walker-walk@rand5", seed=1)),
    )
    other = parameters(envs.make("walker-walk@rand6", seed=0))
    wide = parameters(envs.make("walker-walk@rand5:0.5", seed=0))
    for key in SCALED:
        np.testing.assert_array_equal(first[key], again[key])  # the env seed does not change the body
        assert not np.array_equal(first[key], other[key]), key
        nonzero = base[key] != 0
        ratio = first[key][nonzero] / base[key][nonzero]
        assert np.all(np.abs(ratio - 1) <= randomized.SPREAD + 1e-9) and not np.allclose(ratio, 1), key
        assert np.abs(wide[key][nonzero] / base[key][nonzero] - 1).max() > randomized.SPREAD, key


def test_reset_and_steps_keep_the_randomized_parameters():
    env = envs.make("cheetah-run@rand1", seed=0)
    before = parameters(env)
    env.reset(seed=3)
    for _ in range(5):
        env.step(np.full(env.spec.act_dim, 0.5))
    env.reset(seed=4)
    for key, value in parameters(env).items():
        np.testing.assert_array_equal(value, before[key])


def test_the_dynamics_differ_from_the_base_task():
    actions = np.random.default_rng(0).uniform(-1, 1, size=(20, 6))
    trajectories = []
    for name in ("walker-walk", "walker-walk@rand2"):
        env = envs.make(name, seed=0)
        env.reset(seed=0)
        trajectories.append([env.step(a)[0] for a in actions])
    assert np.abs(np.array(trajectories[0]) - np.array(trajectories[1])).max() > 1e-3


@pytest.mark.parametrize("name", ["cartpole-swingup@rand1", "walker-walk@rand2", "reacher-easy@rand4"])
def test_reward_from_obs_matches_a_variants_own_reward(name):
    obs, act, rew = real_transitions(name, episodes=40)
    fn = envs.reward_fn(name)
    np.testing.assert_allclose(fn(obs, act), rew, atol=1e-4, rtol=0)
    assert rew.max() > 0 and np.unique(rew).size > 1


@pytest.mark.parametrize(
    "name,message",
    [
        ("walker-stand@rand", r"expected <suite-task>@rand<seed>"),
        ("walker-stand@random3", r"expected <suite-task>@rand<seed>"),
        ("walker-stand@rand3:1.5", r"spread .* must be in \[0, 1\)"),
        ("walker-stnd@rand3", r"unknown environment 'walker-stnd@rand3'; did you mean walker-stand"),
    ],
)
def test_bad_variant_names_say_what_is_expected(name, message):
    with pytest.raises(ConfigError, match=message):
        envs.spec(name)
