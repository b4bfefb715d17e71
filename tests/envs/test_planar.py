"""Planar forward kinematics against MuJoCo's own body centres of mass and subtree velocity, numpy and torch."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest
import torch

from tdm_dist.envs.planar import PlanarKinematics, suite_kinematics

DOMAINS = ["hopper", "cheetah", "walker"]


def random_states(domain: str, n: int = 64):
    """qpos [n, nq], qvel [n, nv] at random, and what MuJoCo computes for them: xipos [n, nbody, 2] (x, z) and
    the torso's subtree centre-of-mass velocity [n, 2] (x, z), from ``subtree_linvel`` and from the sensor."""
    from dm_control import suite

    physics = suite.load(domain, next(t for d, t in suite.ALL_TASKS if d == domain)).physics
    model, data = physics.model, physics.data
    rng = np.random.default_rng(0)
    qpos, qvel = rng.uniform(-np.pi, np.pi, (n, model.nq)), rng.normal(0, 3, (n, model.nv))
    xipos, subtree_vel, sensor_vel = [], [], []
    for qp, qv in zip(qpos, qvel, strict=True):
        data.qpos[:], data.qvel[:] = qp, qv
        physics.forward()
        mujoco.mj_subtreeVel(model.ptr, data.ptr)
        xipos.append(data.xipos[:, [0, 2]].copy())
        subtree_vel.append(physics.named.data.subtree_linvel["torso", ["x", "z"]].copy())
        sensor_vel.append(physics.named.data.sensordata["torso_subtreelinvel"][[0, 2]].copy())
    return qpos, qvel, np.array(xipos), np.array(subtree_vel), np.array(sensor_vel), physics


@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_kinematics_match_mujoco(domain, backend):
    qpos, qvel, xipos, subtree_vel, sensor_vel, _ = random_states(domain)
    kin = suite_kinematics(domain)
    torso = kin.body_names.index("torso")
    to = torch.from_numpy if backend == "torch" else np.asarray
    com = kin.com_positions(to(qpos))
    vel = kin.subtree_com_velocity(to(qpos), to(qvel), torso)
    assert isinstance(com, torch.Tensor) == (backend == "torch")
    com, vel = np.asarray(com), np.asarray(vel)
    np.testing.assert_allclose(com, xipos, atol=1e-10, rtol=0)
    np.testing.assert_allclose(vel, subtree_vel, atol=1e-10, rtol=0)
    np.testing.assert_allclose(vel[:, 0], sensor_vel[:, 0], atol=1e-10, rtol=0)
    # any leading dims
    assert kin.com_positions(to(qpos.reshape(4, 16, -1))).shape == (4, 16, kin.nbody, 2)


def test_torch_float32_and_gradients():
    qpos, qvel, _, subtree_vel, _, _ = random_states("cheetah", n=8)
    kin = suite_kinematics("cheetah")
    q = torch.tensor(qpos, dtype=torch.float32, requires_grad=True)
    vel = kin.subtree_com_velocity(q, torch.tensor(qvel, dtype=torch.float32))
    assert vel.dtype == torch.float32
    np.testing.assert_allclose(vel.detach().numpy(), subtree_vel, atol=1e-4)
    vel.sum().backward()  # plain torch ops all the way: the planner may differentiate through it
    assert q.grad is not None and torch.isfinite(q.grad).all()


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_walker_qpos_from_pose_inverts_the_kinematics(backend):
    qpos, _, _, _, _, physics = random_states("walker")
    kin = suite_kinematics("walker")
    angles, root_xz = [], []
    for qp in qpos:
        physics.data.qpos[:] = qp
        physics.forward()
        xmat = physics.data.xmat[1:].reshape(-1, 3, 3)
        angles.append(np.arctan2(xmat[:, 0, 2], xmat[:, 0, 0]))
        root_xz.append(physics.data.xpos[1, [0, 2]].copy())
    to = torch.from_numpy if backend == "torch" else np.asarray
    got = np.asarray(kin.qpos_from_pose(to(np.array(angles)), to(np.array(root_xz))))
    np.testing.assert_allclose(got, qpos, atol=1e-10)  # qpos was drawn in (-pi, pi): no wrapping ambiguity


def test_non_planar_joints_are_refused():
    model = mujoco.MjModel.from_xml_string(
        '<mujoco><worldbody><body><joint type="hinge" axis="1 0 0"/><geom size=".1"/></body></worldbody></mujoco>'
    )
    with pytest.raises(ValueError, match="not planar"):
        PlanarKinematics(model)
