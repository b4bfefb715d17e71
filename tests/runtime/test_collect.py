"""`tdm collect` on a real Ray runtime with EnvWorker actors and real MuJoCo episodes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tdm_dist import envs
from tdm_dist.data import existing_ids, read_episodes, validate_dataset
from tdm_dist.errors import ConfigError
from tdm_dist.runtime.collect import CollectConfig, collect, episode_seed
from tdm_dist.runtime.env_worker import EnvWorker, ExpertConfig

ROOT = Path(__file__).resolve().parents[2]
CHEAP_MPC = {"samples": 8, "horizon": 10, "iterations": 1, "replan_every": 10}  # a weak but real GT-MPC expert


def test_collect_writes_complete_episodes_and_resumes(tmp_path, ray_session):
    out = tmp_path / "data"
    expert = ExpertConfig(kind="random")
    cfg = CollectConfig(env="cartpole-swingup", episodes=3, out=str(out), expert=expert, steps=120)
    assert collect(cfg, progress=False)["collected"] == 3
    cfg.episodes = 5
    result = collect(cfg, progress=False)  # the same command with more episodes collects only the new ids
    assert result == {**result, "collected": 2, "skipped": 3}
    assert existing_ids(out, "cartpole-swingup") == {0, 1, 2, 3, 4}
    assert validate_dataset(out)["episodes"] == 5
    assert collect(cfg, progress=False)["collected"] == 0
    episodes = {ep["episode_id"]: ep for ep in read_episodes(out)}
    ep = episodes[3]
    assert ep["seed"] == episode_seed(0, 3) and ep["observations"].shape == (121, 5)  # --steps 120
    assert ep["rewards"][0] == 0 and ep["return"] == pytest.approx(ep["rewards"].sum(), rel=1e-5)
    assert not list(out.rglob("*.tmp"))


def test_collect_many_envs_of_different_dims_into_one_dataset(tmp_path, ray_session):
    out = tmp_path / "data"
    names = ["procwalker-chain-0001", "procwalker-chain-0002", "cartpole-swingup"]
    cfg = CollectConfig(
        env="procwalker-chain-1..2,cartpole-swingup", episodes=1, out=str(out), expert=ExpertConfig(kind="random")
    )
    assert cfg.envs == names
    result = collect(cfg, progress=False)
    assert (result["collected"], result["skipped"], result["envs"]) == (3, 0, 3)
    cfg.episodes = 2
    assert collect(cfg, progress=False)["collected"] == 3  # only episode 1 of each env is new
    summary = validate_dataset(out)
    assert summary["episodes"] == 6
    dims = {
        (ep["env"], ep["episode_id"]): (ep["observations"].shape[1], ep["actions"].shape[1])
        for ep in read_episodes(out)
    }
    for env in names:
        spec = envs.spec(env)
        assert dims[env, 0] == dims[env, 1] == (spec.obs_dim, spec.act_dim)
        assert existing_ids(out, env) == {0, 1}
    assert len({dims[env, 0] for env in names}) == 3  # three different layouts in one dataset


def test_a_worker_switches_to_the_environment_of_its_episode():
    worker = EnvWorker("cartpole-swingup")
    episode = worker.collect_episode(0, seed=5, expert=ExpertConfig(kind="random"), env="procwalker-line-0003")
    assert episode["env"] == "procwalker-line-0003" and episode["spec"] == envs.spec("procwalker-line-0003").to_dict()
    assert worker.spec()["name"] == "procwalker-line-0003" and not worker.reset_done


def test_episodes_are_deterministic_given_their_seed():
    worker = EnvWorker("cartpole-swingup")
    expert = ExpertConfig(kind="gt-mpc", planner=CHEAP_MPC)
    a = worker.collect_episode(7, seed=123, expert=expert)
    b = EnvWorker("cartpole-swingup").collect_episode(7, seed=123, expert=expert)
    np.testing.assert_array_equal(a["actions"], b["actions"])
    assert a["expert_settings"]["planner"] == CHEAP_MPC and a["spec"] == envs.spec("cartpole-swingup").to_dict()


def test_ground_truth_rollouts_leave_the_worker_state_alone():
    worker = EnvWorker("cartpole-swingup", seed=0)
    worker.reset(seed=0)
    state = worker.get_state()
    rewards = worker.rollout(None, np.zeros((4, 6, 1)))
    assert rewards.shape == (4, 6)
    np.testing.assert_array_equal(worker.get_state(), state)
    _, reward, _ = worker.step(np.zeros(1))
    assert reward == pytest.approx(rewards[0, 0], abs=1e-9)


def test_bad_collect_settings_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="did you mean"):
        CollectConfig(env="cartpole-swingupp", episodes=1, out=str(tmp_path)).check()
    with pytest.raises(ConfigError, match="--episodes"):
        CollectConfig(env="cartpole-swingup", episodes=0, out=str(tmp_path)).check()
    for steps in (0, 1001):
        with pytest.raises(
            ConfigError, match=r"--steps must be in \[1, 1000\] \(the episode length of cartpole-swingup\), got"
        ):
            CollectConfig(env="cartpole-swingup", episodes=1, out=str(tmp_path), steps=steps).check()
    with pytest.raises(ConfigError, match="apply to the gt-mpc expert, not random"):
        CollectConfig("cartpole-swingup", 1, str(tmp_path), ExpertConfig(kind="random", action_noise=0.1)).check()
    with pytest.raises(ConfigError, match=r"elites .* must not exceed samples"):  # before any actor starts
        CollectConfig("cartpole-swingup", 1, str(tmp_path), ExpertConfig(planner={"samples": 4})).check()
    with pytest.raises(ConfigError, match="expected gt-mpc, random or rllib:PATH"):
        ExpertConfig.parse("ppo")


def test_checking_a_collection_of_whole_episodes_builds_no_environment(tmp_path):
    """A procedural walker's spec is a MuJoCo build: checking 10,000 of them took minutes (the paper-scale
    zero-shot experiment). Whole episodes need no episode length, so the check builds none."""
    from tdm_dist.envs import procedural

    procedural.spec.cache_clear()
    CollectConfig(env="procwalker-chain-0..9999", episodes=10, out=str(tmp_path)).check()
    assert procedural.spec.cache_info().currsize == 0
    with pytest.raises(ConfigError, match=r"--steps must be in \[1, 1000\] \(the episode length of procwalker"):
        CollectConfig(env="procwalker-chain-0..1", episodes=1, out=str(tmp_path), steps=1001).check()


def test_corrupt_dataset_stops_collect_with_the_file_name(tmp_path):
    bad = tmp_path / "data" / "env=cartpole-swingup" / "part-0.parquet"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"PAR1 not really parquet")
    out = subprocess.run(
        [sys.executable, "-m", "tdm_dist.cli", "collect", "--env", "cartpole-swingup", "--episodes", "1",
         "--expert", "random", "--out", str(tmp_path / "data")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 2 and "part-0.parquet" in out.stderr and "Traceback" not in out.stderr
    assert sorted(p.name for p in bad.parent.iterdir()) == ["part-0.parquet"]  # nothing written beside it
