"""Planar (x-z) forward kinematics of the suite's 2-D bodies (hopper, cheetah, walker), for numpy and torch.

Why: planning scores predicted observations with the task's own reward (paper eq. 5). The hopper, cheetah
and walker rewards read body centre-of-mass heights and the centre-of-mass velocity of the whole body; the
observation does not hold them, but it determines them through the kinematics of the joint chain. This
module computes them the way MuJoCo does (``data.xipos`` and ``data.subtree_linvel``), with plain array ops
so that a planner can run it on torch tensors on its device.

MuJoCo's convention, restricted to the x-z plane (every rotation is about the y axis):

* a body starts from its parent's frame: ``xpos = parent_xpos + parent_R @ body_pos``, ``R = parent_R @ body_R``;
* then each of its joints, in order: a slide moves it along ``R @ axis`` by ``q``; a hinge about ``±y`` turns
  ``R`` by ``±q`` about the anchor ``xpos + R @ jnt_pos``, which stays put;
* its centre of mass is ``xipos = xpos + R @ body_ipos``.

Velocities are forward-mode derivatives of these positions along ``qvel``, carried by hand through the chain
(every quantity comes with its time derivative), so one code path serves numpy and torch.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from tdm_dist.arrays import array_module

_SLIDE, _HINGE = 2, 3  # mujoco.mjtJoint.mjJNT_SLIDE, mjJNT_HINGE


def _stack(xs, axis: int):
    return torch.stack(xs, dim=axis) if array_module(xs[0]) is torch else np.stack(xs, axis=axis)


def _rotate(vx: float, vz: float, angle, rate):
    """A constant in-plane vector (vx, vz) rotated by ``angle`` about y, and its time derivative given ``rate``.

    Returns (x, z, dx, dz), each shaped like ``angle``; R_y(a) maps (x, z) to (cos a x + sin a z, -sin a x + cos a z).
    """
    xp = array_module(angle)
    c, s = xp.cos(angle), xp.sin(angle)
    x, z = c * vx + s * vz, c * vz - s * vx
    return x, z, rate * z, -rate * x


def _planar_angle(quat: np.ndarray, what: str) -> float:
    """The angle of a rotation about +y given as a unit quaternion (w, x, y, z); raise for any other rotation."""
    w, x, y, z = quat
    if abs(x) > 1e-12 or abs(z) > 1e-12:
        raise ValueError(f"{what} turns out of the x-z plane (quat {quat.tolist()}): only rotations about y are planar")
    return 2.0 * float(np.arctan2(y, w))


class PlanarKinematics:
    """Forward kinematics of a MuJoCo model whose joints are slides in the x-z plane and hinges about ±y.

    Everything needed is read from the compiled ``model`` once, into plain Python constants.
    """

    def __init__(self, model):
        self.nbody, self.nq = int(model.nbody), int(model.nq)
        self.body_names = [model.body(b).name for b in range(self.nbody)]
        self.parent = [int(p) for p in model.body_parentid]
        self.body_pos = [(float(p[0]), float(p[2])) for p in model.body_pos]
        self.body_ipos = [(float(p[0]), float(p[2])) for p in model.body_ipos]
        self.body_angle = [_planar_angle(q, f"body {b}") for b, q in enumerate(model.body_quat)]
        self.mass = [float(m) for m in model.body_mass]
        # joints[b]: (kind, qpos index, qvel index, axis (x, z) for a slide or sign of y for a hinge, anchor (x, z))
        self.joints: list[list[tuple]] = [[] for _ in range(self.nbody)]
        for b in range(self.nbody):
            for j in range(model.body_jntadr[b], model.body_jntadr[b] + model.body_jntnum[b]):
                kind, axis = int(model.jnt_type[j]), model.jnt_axis[j]
                anchor = (float(model.jnt_pos[j, 0]), float(model.jnt_pos[j, 2]))
                if kind == _SLIDE and axis[1] == 0:
                    direction = (float(axis[0]), float(axis[2]))
                elif kind == _HINGE and axis[0] == axis[2] == 0:
                    direction = float(np.sign(axis[1]))
                else:
                    raise ValueError(
                        f"joint {j} (type {kind}, axis {axis.tolist()}) is not planar: "
                        "only slides in the x-z plane and hinges about ±y are supported"
                    )
                self.joints[b].append((kind, int(model.jnt_qposadr[j]), int(model.jnt_dofadr[j]), direction, anchor))

    def _forward(self, qpos, qvel):
        """Each body's centre of mass and its velocity: four lists over bodies of [...] arrays (x, z, dx, dz)."""
        zero = 0.0 * qpos[..., 0]
        if qvel is None:
            qvel = 0.0 * qpos
        # frame origin, angle and their time derivatives, per body; body 0 is the world
        x, z, a, dx, dz, da = ([zero] for _ in range(6))
        com = [[zero], [zero], [zero], [zero]]  # x, z, dx, dz of each body's centre of mass
        for b in range(1, self.nbody):
            p = self.parent[b]
            ox, oz, dox, doz = _rotate(*self.body_pos[b], a[p], da[p])
            bx, bz, bdx, bdz = x[p] + ox, z[p] + oz, dx[p] + dox, dz[p] + doz
            ba, bda = a[p] + self.body_angle[b], da[p]
            for kind, qi, vi, direction, anchor in self.joints[b]:
                q, dq = qpos[..., qi], qvel[..., vi]
                if kind == _SLIDE:
                    ux, uz, dux, duz = _rotate(*direction, ba, bda)
                    bx, bz, bdx, bdz = bx + ux * q, bz + uz * q, bdx + dux * q + ux * dq, bdz + duz * q + uz * dq
                else:  # hinge: turn about the anchor, i.e. xpos = anchor - R_new @ jnt_pos
                    rx, rz, drx, drz = _rotate(*anchor, ba, bda)
                    ba, bda = ba + direction * q, bda + direction * dq
                    sx, sz, dsx, dsz = _rotate(*anchor, ba, bda)
                    bx, bz, bdx, bdz = bx + rx - sx, bz + rz - sz, bdx + drx - dsx, bdz + drz - dsz
            ix, iz, dix, diz = _rotate(*self.body_ipos[b], ba, bda)
            for lst, v in zip((x, z, a, dx, dz, da), (bx, bz, ba, bdx, bdz, bda), strict=True):
                lst.append(v)
            for lst, v in zip(com, (bx + ix, bz + iz, bdx + dix, bdz + diz), strict=True):
                lst.append(v)
        return com

    def com_positions(self, qpos):
        """qpos [..., nq] -> [..., nbody, 2]: (x, z) of every body's centre of mass, as MuJoCo's ``data.xipos``."""
        cx, cz, _, _ = self._forward(qpos, None)
        return _stack([_stack(cx, -1), _stack(cz, -1)], -1)

    def subtree_com_velocity(self, qpos, qvel, body: int = 1):
        """qpos [..., nq], qvel [..., nq] -> [..., 2]: the (x, z) velocity of the centre of mass of ``body``'s subtree.

        The mass-weighted mean of its bodies' centre-of-mass velocities, as MuJoCo's ``data.subtree_linvel``.
        """
        _, _, cdx, cdz = self._forward(qpos, qvel)
        subtree = [b for b in range(self.nbody) if self._descends(b, body)]
        total = sum(self.mass[b] for b in subtree)
        vx = sum(self.mass[b] * cdx[b] for b in subtree) / total
        vz = sum(self.mass[b] * cdz[b] for b in subtree) / total
        return _stack([vx, vz], -1)

    def _descends(self, b: int, ancestor: int) -> bool:
        while b != ancestor and b != 0:
            b = self.parent[b]
        return b == ancestor

    def qpos_from_pose(self, angle, root_xz):
        """Invert the kinematics: qpos [..., nq] from every body's absolute angle and the root's frame origin.

        angle [..., nbody - 1]: the planar angle of bodies 1.. about +y (``atan2(xmat xz, xmat xx)``); root_xz
        [..., 2]: ``xpos`` of body 1. Needs the walker's layout: body 1 has two orthogonal slides, then one hinge
        at its origin, every other body exactly one hinge. Hinge angles come back wrapped to (-pi, pi].
        """
        xp = array_module(angle)
        full = [0.0 * angle[..., 0]] + [angle[..., b - 1] for b in range(1, self.nbody)]  # world angle 0
        qpos = [None] * self.nq
        for b in range(1, self.nbody):
            kinds = [j[0] for j in self.joints[b]]
            expected = [_SLIDE, _SLIDE, _HINGE] if b == 1 else [_HINGE]
            if kinds != expected or (b == 1 and self.joints[b][-1][4] != (0.0, 0.0)):
                raise ValueError(f"body {b} has joints {self.joints[b]}: qpos_from_pose needs the walker's layout")
            _, qi, _, sign, _ = self.joints[b][-1]
            turn = full[b] - full[self.parent[b]] - self.body_angle[b]
            qpos[qi] = sign * xp.arctan2(xp.sin(turn), xp.cos(turn))
        # the root's slides move it along R(body angle) @ axis from body_pos; orthogonal axes invert by projection
        slides = self.joints[1][:2]
        (ux, uz), (vx, vz) = (_rotate(*s[3], self.body_angle[1], 0.0)[:2] for s in slides)
        if abs(ux * vx + uz * vz) > 1e-12:
            raise ValueError("the root's slides are not orthogonal")
        ox, oz = root_xz[..., 0] - self.body_pos[1][0], root_xz[..., 1] - self.body_pos[1][1]
        qpos[slides[0][1]], qpos[slides[1][1]] = ox * ux + oz * uz, ox * vx + oz * vz
        return _stack(qpos, -1)


@functools.lru_cache
def suite_kinematics(domain: str) -> PlanarKinematics:
    """The kinematics of a dm_control suite domain's model (the same for all its tasks), loaded once."""
    from dm_control import suite

    task = next(t for d, t in suite.ALL_TASKS if d == domain)
    return PlanarKinematics(suite.load(domain, task).physics.model)
