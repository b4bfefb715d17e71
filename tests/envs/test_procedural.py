"""The procedural walker universe: names, determinism, the four families, stability, the task, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mujoco
import numpy as np
import pytest

from tdm_dist import envs
from tdm_dist.envs import procedural, render
from tdm_dist.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def stress(family: str, seed: int, steps: int) -> tuple[int, float]:
    """Simulate ``steps`` environment steps of uniform random actions on the compiled model with mujoco itself
    -> (actuated hinges, max |qvel| seen); fails on a non-finite state or a MuJoCo instability warning."""
    env = procedural.load(procedural.env_name(family, seed), seed=seed)
    env.reset()
    model, data = env.physics.model.ptr, env.physics.data.ptr
    sub_steps = round(procedural.CONTROL_TIMESTEP / model.opt.timestep)
    rng = np.random.default_rng(seed)
    hinges = int(np.sum(model.jnt_type == mujoco.mjtJoint.mjJNT_HINGE))
    assert model.nu == hinges and model.njnt == hinges + 1  # every hinge actuated, plus the free root
    top = 0.0
    for _ in range(steps):
        data.ctrl[:] = rng.uniform(-1, 1, model.nu)
        mujoco.mj_step(model, data, nstep=sub_steps)
        top = max(top, float(np.abs(data.qvel).max()))
    assert np.all(np.isfinite(data.qpos)) and np.all(np.isfinite(data.qvel)), (family, seed)
    assert data.warning[mujoco.mjtWarning.mjWARN_BADQACC].number == 0, (family, seed)  # MuJoCo reset the state
    return hinges, top


MAX_QVEL = 200.0  # rad/s or m/s: far above what random torques reach (~40), far below an explosion (~1e5)


def check_family(family: str, seeds: range, steps: int) -> None:
    for seed in seeds:
        hinges, top = stress(family, seed, steps)
        assert procedural.MIN_JOINTS <= hinges <= procedural.MAX_JOINTS, (family, seed, hinges)
        assert top < MAX_QVEL, (family, seed, top)


@pytest.mark.parametrize("family", procedural.FAMILIES)
def test_bodies_compile_and_simulate_random_actions_stably(family):
    check_family(family, range(10), steps=200)


@pytest.mark.slow
@pytest.mark.parametrize("family", procedural.FAMILIES)
def test_two_hundred_bodies_per_family_simulate_1000_steps_stably(family):
    """The issue's acceptance: 200 seeds per family, 1000 random-action steps each."""
    check_family(family, range(200), steps=1000)


@pytest.mark.parametrize("family", procedural.FAMILIES)
def test_the_same_seed_gives_the_same_mjcf(family):
    xml = [procedural.build_mjcf(procedural.generate(family, seed)).to_xml_string() for seed in (7, 7, 8)]
    assert xml[0] == xml[1] and xml[0] != xml[2]


def test_names_pick_the_body_by_family_and_seed():
    assert procedural.parse("procwalker-chain-0042") == procedural.parse("procwalker-chain-42") == ("chain", 42)
    assert procedural.env_name("chain", 42) == "procwalker-chain-0042"
    a, b = envs.make("procwalker-chain-0042", seed=0), envs.make("procwalker-chain-42", seed=0)
    assert a.physics.model.nq == b.physics.model.nq and a.spec.name == "procwalker-chain-0042"
    for name, message in [
        ("procwalker-blob-1", "unknown procedural walker family 'blob'.*line, chain, bush, tree"),
        ("procwalker-chain", "expected procwalker-<family>-<seed>"),
        ("procwalker-chain-x1", "expected procwalker-<family>-<seed>"),
    ]:
        with pytest.raises(ConfigError, match=message):
            envs.spec(name)


def test_the_families_differ_as_the_paper_describes():
    seeds = range(60)
    stats = {f: {k: np.array(v) for k, v in procedural.family_stats(f, seeds).items()} for f in procedural.FAMILIES}
    for s in stats.values():
        assert s["dof"].min() >= 4 and s["dof"].max() <= 20 and len(set(s["dof"])) > 8
    # line and chain: one unbranched limb after another, so the tree is as deep as the body has links
    for family in ("line", "chain"):
        assert np.all(stats[family]["depth"] == stats[family]["dof"]) and np.all(stats[family]["branch_points"] == 0)
    assert np.all(stats["line"]["turns"] == 0) and stats["chain"]["turns"].mean() > 0.6  # 4 of 5 directions turn
    # bush and tree branch, so they are shallower; tree most of all (new limbs anywhere, not only at limb ends)
    assert stats["bush"]["branch_points"].mean() > 1 and stats["tree"]["branch_points"].mean() > 1
    assert stats["chain"]["depth"].mean() > stats["bush"]["depth"].mean() > stats["tree"]["depth"].mean()
    # chain and bush turn to axis-aligned directions; tree points anywhere
    aligned = {
        f: np.mean(
            [np.isclose(np.abs(link.direction).max(), 1) for s in seeds for link in procedural.generate(f, s).links]
        )
        for f in procedural.FAMILIES
    }
    assert aligned["chain"] == aligned["bush"] == 1.0 and aligned["tree"] < 0.05


def test_a_limb_has_one_or_two_links():
    for family in procedural.FAMILIES:
        for seed in range(20):
            limbs = np.bincount([link.limb for link in procedural.generate(family, seed).links])
            assert limbs.min() >= 1 and limbs.max() <= 2, (family, seed)


def test_the_env_observes_joints_and_the_torso_and_says_its_reward_is_not_from_observations():
    spec = envs.spec("procwalker-tree-0003")
    n = spec.act_dim
    assert dict(spec.obs_keys) == {
        "joint_angles": n,
        "joint_velocities": n,
        "root_orientation": 9,
        "root_height": 1,
        "root_velocity": 3,
        "root_angular_velocity": 3,
    }
    assert spec.velocity_mask.sum() == n + 6 and spec.episode_length == 1000
    assert not spec.has_reward_from_obs and "centre of mass" in spec.reward_note
    with pytest.raises(ConfigError, match="predicted rewards"):
        envs.reward_fn(spec.name)
    env = envs.make(spec.name, seed=0)
    obs = env.reset(seed=0)
    assert obs.shape == (spec.obs_dim,) and 0 < obs[spec.obs_slices()["root_height"]][0] < 2
    rewards = [env.step(np.random.default_rng(t).uniform(-1, 1, n))[1] for t in range(20)]
    assert all(0 <= r <= 1 for r in rewards)


@pytest.mark.parametrize("speed,reward", [(0.0, 0.0), (0.5, 0.5), (1.0, 1.0), (1.5, 0.5), (2.5, 0.0), (-1.0, 0.0)])
def test_the_reward_is_the_corridor_run_reward_of_the_centre_of_mass_x_velocity(speed, reward):
    env = envs.make("procwalker-bush-0001", seed=0)
    env.reset(seed=0)
    physics = env.physics
    with physics.reset_context():
        physics.data.qvel[:] = 0
        physics.data.qvel[0] = speed  # the free joint's linear velocity: every body moves at this speed
    assert env.dm_env.task.get_reward(physics) == pytest.approx(reward)


def test_episodes_start_just_above_the_floor_and_are_reproducible():
    a, b = envs.make("procwalker-line-0005", seed=0), envs.make("procwalker-line-0005", seed=1)
    np.testing.assert_array_equal(a.reset(seed=3), b.reset(seed=3))
    assert not np.array_equal(a.reset(seed=3), a.reset(seed=4))
    a.reset(seed=3)
    assert procedural._lowest_point(a.physics) == pytest.approx(0.05)


def test_rendering_gives_a_picture_or_says_how_to_get_a_renderer():
    env = envs.make("procwalker-chain-0000", seed=0)
    env.reset(seed=0)
    try:
        image = render.picture(env, width=64, height=48)
    except ConfigError as e:
        assert "MUJOCO_GL" in str(e) and "osmesa" in str(e)
    else:
        assert image.shape == (48, 64, 3) and image.dtype == np.uint8 and image.std() > 0


def tdm(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tdm_dist.cli", *args], capture_output=True, text=True, timeout=600, cwd=ROOT, env=env
    )


def test_cli_prints_family_statistics():
    out = tdm("envs", "--family", "bush", "--stats", "--count", "30", "--json")
    assert out.returncode == 0, out.stderr
    stats = json.loads(out.stdout)
    assert stats["family"] == "bush" and stats["bodies"] == 30 and sum(stats["dof_histogram"].values()) == 30
    assert stats["summary"]["branch_points"]["mean"] > 1
    table = tdm("envs", "--family", "chain", "--stats", "--count", "10")
    assert table.returncode == 0 and "degrees of freedom" in table.stdout and "depth" in table.stdout
    bad = tdm("envs", "--stats")
    assert bad.returncode == 2 and "--family" in bad.stderr


@pytest.mark.slow
def test_cli_renders_a_picture_per_body_and_the_overview(tmp_path):
    import os

    out = tdm("envs", "--family", "chain", "--count", "2", "--render", str(tmp_path), env={**os.environ})
    if out.returncode == 2 and "no offscreen renderer" in out.stderr:
        pytest.skip(out.stderr)
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "overview.png",
        "procwalker-chain-0000.png",
        "procwalker-chain-0001.png",
    ]
