"""The RLlib SAC expert: the gymnasium wrapper, a tiny training run, and its policy played without Ray."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from tdm_dist import envs
from tdm_dist.envs.gym import GymEnv, make_gym_env
from tdm_dist.errors import CheckpointError, ConfigError
from tdm_dist.planning.ground_truth import run_episode
from tdm_dist.runtime.rllib_expert import RLlibPolicy, SACSettings, train_sac

ENV = "pendulum-swingup"  # obs_dim 3, act_dim 1: the cheapest task to train on
TINY = SACSettings(hidden=(16, 16), batch_size=16, warmup_steps=20, steps_per_iteration=40)


@pytest.fixture(scope="module")
def checkpoint(ray_session, tmp_path_factory):
    """Two tiny SAC iterations (80 env steps) on ``ENV``."""
    return train_sac(ENV, tmp_path_factory.mktemp("sac"), iterations=2, seed=0, settings=TINY, progress=False)


def test_gym_env_passes_the_gymnasium_checker():
    from gymnasium.utils.env_checker import check_env

    env = make_gym_env({"name": "cartpole-swingup"})
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Box observation space (minimum|maximum).*")  # unbounded on purpose
        check_env(env, skip_render_check=True)
    assert env.observation_space.shape == (5,) and env.action_space.shape == (1,)
    obs, _ = env.reset(seed=3)
    assert obs.dtype == np.float32
    np.testing.assert_allclose(obs, envs.make("cartpole-swingup").reset(3), rtol=1e-6)


def test_gym_env_truncates_after_the_episode_length():
    env = GymEnv("pendulum-swingup")
    env.reset(seed=0)
    for t in range(env.env.spec.episode_length):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        assert not terminated and truncated == (t == env.env.spec.episode_length - 1)


def test_make_gym_env_needs_a_name():
    with pytest.raises(ConfigError, match="name"):
        make_gym_env({})


def test_trained_policy_plays_an_episode(checkpoint):
    assert (checkpoint / "tdm_expert.json").exists()
    policy = RLlibPolicy(checkpoint)
    episode = run_episode(envs.make(ENV), policy, seed=0, steps=20)
    actions = episode["actions"]
    assert actions.shape == (20, 1) and np.all(np.abs(actions) <= 1)
    again = run_episode(envs.make(ENV), policy, seed=0, steps=20)["actions"]
    np.testing.assert_array_equal(actions, again)  # deterministic


def test_policy_refuses_another_env(checkpoint):
    with pytest.raises(ConfigError, match="trained on pendulum-swingup"):
        RLlibPolicy(checkpoint).act(envs.make("cartpole-swingup"))


def test_bad_checkpoint_path_raises(tmp_path):
    with pytest.raises(CheckpointError, match=str(tmp_path)):
        RLlibPolicy(tmp_path)
    with pytest.raises(CheckpointError, match="missing"):
        RLlibPolicy(tmp_path / "missing")


def test_train_sac_rejects_unknown_env(tmp_path):
    with pytest.raises(ConfigError, match="unknown environment"):
        train_sac("cartpole-swingupp", tmp_path, iterations=1)


def test_collect_with_the_rllib_expert(checkpoint, tmp_path, ray_session):
    """`tdm collect --expert rllib:PATH`: EnvWorker actors play the trained policy into the dataset."""
    from tdm_dist.data import read_episodes
    from tdm_dist.runtime.collect import CollectConfig, collect
    from tdm_dist.runtime.env_worker import ExpertConfig

    expert = ExpertConfig.parse(f"rllib:{checkpoint}")
    cfg = CollectConfig(env=ENV, episodes=2, out=str(tmp_path / "data"), expert=expert, workers=2)
    assert collect(cfg, progress=False)["collected"] == 2
    episodes = read_episodes(tmp_path / "data")
    assert {ep["expert"] for ep in episodes} == {"rllib"}
    assert all(np.abs(ep["actions"]).max() <= 1 for ep in episodes)
    assert episodes[0]["expert_settings"]["checkpoint"] == str(checkpoint)
