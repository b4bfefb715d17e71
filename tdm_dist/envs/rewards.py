"""Rewards as functions of the next observation and the action (paper §4.1, eq. 5).

Each reward reads like the dm_control task's own ``get_reward`` and uses the same ``tolerance`` shaping;
it takes a flat observation batch ``next_obs [..., n]`` and the action that led to it ``action [..., m]``
(several suite rewards include a control cost) and returns ``[...]``. Every function works on numpy arrays
and torch tensors alike, so planners can score imagined trajectories on the model's device.

A task is listed in ``REWARDS`` only when its reward is a function of (observation, action); see
``tests/envs/test_rewards.py`` for the agreement with the environment's own reward on real transitions.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import torch
from dm_control.suite import cartpole, cheetah, hopper, humanoid, humanoid_CMU, pendulum, walker
from dm_control.utils import rewards as dm_rewards

from tdm_dist.arrays import array_module
from tdm_dist.envs import randomized
from tdm_dist.envs.planar import PlanarKinematics
from tdm_dist.envs.spec import EnvSpec

RewardFn = Callable[[object, object], object]


def _sigmoid(x, value_at_1: float, sigmoid: str):
    """dm_control.utils.rewards._sigmoids for the shapes the suite rewards use, for numpy or torch."""
    xp = array_module(x)
    if sigmoid == "gaussian":
        scale = np.sqrt(-2 * np.log(value_at_1))
        return xp.exp(-0.5 * (x * scale) ** 2)
    if sigmoid == "linear":
        scaled = x * (1 - value_at_1)
        return xp.where(abs(scaled) < 1, 1 - scaled, 0.0 * scaled)
    if sigmoid == "quadratic":
        scaled = x * np.sqrt(1 - value_at_1)
        return xp.where(abs(scaled) < 1, 1 - scaled**2, 0.0 * scaled)
    raise ValueError(f"unsupported sigmoid {sigmoid!r}; expected gaussian, linear or quadratic")


def tolerance(x, bounds=(0.0, 0.0), margin=0.0, sigmoid="gaussian", value_at_margin=0.1):
    """``dm_control.utils.rewards.tolerance`` with the same semantics, for numpy arrays and torch tensors."""
    if array_module(x) is np:
        return dm_rewards.tolerance(np.asarray(x), bounds, margin, sigmoid, value_at_margin)
    lower, upper = bounds
    in_bounds = (lower <= x) & (x <= upper)
    if margin == 0:
        return in_bounds.to(x.dtype)
    d = torch.where(x < lower, lower - x, x - upper) / margin
    return torch.where(in_bounds, torch.ones_like(x), _sigmoid(d, value_at_margin, sigmoid))


def _norm(x):
    return torch.linalg.vector_norm(x, dim=-1) if array_module(x) is torch else np.linalg.norm(x, axis=-1)


def _amin(x):
    return x.amin(-1) if array_module(x) is torch else x.min(-1)


def _small_control(action, reduce: str = "mean"):
    """The suite's control cost, mapped to [0.8, 1]: (4 + tolerance(u, margin=1, quadratic)) / 5."""
    cost = tolerance(action, margin=1, value_at_margin=0, sigmoid="quadratic")
    cost = cost[..., 0] if reduce == "first" else cost.mean(-1)
    return (4 + cost) / 5


class _Obs:
    """Named views of a flat observation batch, by the keys of the env's observation dict."""

    def __init__(self, obs, spec: EnvSpec):
        self._obs, self._slices = obs, spec.obs_slices()

    def __getitem__(self, key: str):
        return self._obs[..., self._slices[key]]


# --- the suite's rewards --------------------------------------------------------------------------
# Builders take the EnvSpec (for the observation layout) and return reward(next_obs, action).


def _cartpole(sparse: bool):
    def build(spec: EnvSpec) -> RewardFn:
        def reward(next_obs, action):
            o = _Obs(next_obs, spec)
            # position is [cart, zz_1, xz_1, zz_2, xz_2, ...]: the cosine and sine of each pole's angle
            position, angular_vel = o["position"], o["velocity"][..., 1:]
            cart_position, pole_angle_cosine = position[..., 0], position[..., 1::2]
            if sparse:
                cart_in_bounds = tolerance(cart_position, cartpole.Balance._CART_RANGE)
                angle_in_bounds = tolerance(pole_angle_cosine, cartpole.Balance._ANGLE_COSINE_RANGE).prod(-1)
                return cart_in_bounds * angle_in_bounds
            upright = (pole_angle_cosine + 1) / 2
            centered = (1 + tolerance(cart_position, margin=2)) / 2
            small_control = _small_control(action, reduce="first")
            small_velocity = (1 + _amin(tolerance(angular_vel, margin=5))) / 2
            return upright.mean(-1) * small_control * small_velocity * centered

        return reward

    return build


def _pendulum(spec: EnvSpec) -> RewardFn:
    def reward(next_obs, action):
        pole_vertical = _Obs(next_obs, spec)["orientation"][..., 0]  # xmat['pole', 'zz']
        return tolerance(pole_vertical, (pendulum._COSINE_BOUND, 1))

    return reward


# Rewards that read the model (sizes, masses, kinematics) read it from the env's own model, so that a
# randomized variant (``walker-walk@rand2``) is scored with its own scaled parameters.


@functools.lru_cache
def _geom_size(name: str, *geoms: str) -> float:
    """Sum of the first size of named geoms, read from the env's model after a reset."""
    env = randomized.load(name, seed=0)
    env.reset()
    return float(sum(env.physics.named.model.geom_size[g, 0] for g in geoms))


@functools.lru_cache
def _kinematics(name: str) -> PlanarKinematics:
    """The planar kinematics of the env's model (for a suite task, ``planar.suite_kinematics`` of its domain)."""
    return PlanarKinematics(randomized.load(name, seed=0).physics.model)


def _reacher(spec: EnvSpec) -> RewardFn:
    radii = _geom_size(spec.name, "target", "finger")

    def reward(next_obs, action):
        return tolerance(_norm(_Obs(next_obs, spec)["to_target"]), (0, radii))

    return reward


def _walker_stand(spec: EnvSpec) -> RewardFn:
    def reward(next_obs, action):
        o = _Obs(next_obs, spec)
        torso_height = o["height"][..., 0]
        torso_upright = o["orientations"][..., 0]  # the torso's xmat xx equals its zz for a planar rotation
        standing = tolerance(torso_height, bounds=(walker._STAND_HEIGHT, float("inf")), margin=walker._STAND_HEIGHT / 2)
        upright = (1 + torso_upright) / 2
        return (3 * standing + upright) / 4

    return reward


# Hopper, cheetah and walker rewards read body centre-of-mass heights and the whole body's centre-of-mass
# x-velocity (``torso_subtreelinvel``); the observation determines them through the planar kinematics.


def _with_rootx(position):
    """qpos [..., nq] from the observed qpos[1:]: rootx is left out of the observation, and no reward depends on it."""
    return array_module(position).concatenate([0 * position[..., :1], position], axis=-1)


def _hopper(hopping: bool):
    def build(spec: EnvSpec) -> RewardFn:
        kin = _kinematics(spec.name)
        torso, foot = kin.body_names.index("torso"), kin.body_names.index("foot")

        def reward(next_obs, action):
            o = _Obs(next_obs, spec)
            qpos = _with_rootx(o["position"])
            com_z = kin.com_positions(qpos)[..., 1]  # xipos z of every body
            standing = tolerance(com_z[..., torso] - com_z[..., foot], (hopper._STAND_HEIGHT, 2))
            if not hopping:
                return standing * _small_control(action)
            speed = kin.subtree_com_velocity(qpos, o["velocity"], torso)[..., 0]
            hop_speed = hopper._HOP_SPEED
            moving = tolerance(
                speed, bounds=(hop_speed, float("inf")), margin=hop_speed / 2, value_at_margin=0.5, sigmoid="linear"
            )
            return standing * moving

        return reward

    return build


def _cheetah(spec: EnvSpec) -> RewardFn:
    kin = _kinematics(spec.name)
    torso = kin.body_names.index("torso")

    def reward(next_obs, action):
        o = _Obs(next_obs, spec)
        speed = kin.subtree_com_velocity(_with_rootx(o["position"]), o["velocity"], torso)[..., 0]
        run_speed = cheetah._RUN_SPEED
        return tolerance(speed, bounds=(run_speed, float("inf")), margin=run_speed, value_at_margin=0, sigmoid="linear")

    return reward


def _walker(move_speed: float):
    def build(spec: EnvSpec) -> RewardFn:
        kin = _kinematics(spec.name)
        torso = kin.body_names.index("torso")
        stand = _walker_stand(spec)

        def reward(next_obs, action):
            o = _Obs(next_obs, spec)
            xp = array_module(next_obs)
            # orientations is xmat[1:, (xx, xz)]: the cosine and sine of each body's planar angle; with the
            # torso's height they give qpos up to rootx, which does not enter the velocities
            orientations, height = o["orientations"], o["height"]
            angle = xp.arctan2(orientations[..., 1::2], orientations[..., 0::2])
            qpos = kin.qpos_from_pose(angle, xp.concatenate([0 * height, height], axis=-1))
            horizontal_velocity = kin.subtree_com_velocity(qpos, o["velocity"], torso)[..., 0]
            move = tolerance(
                horizontal_velocity,
                bounds=(move_speed, float("inf")),
                margin=move_speed / 2,
                value_at_margin=0.5,
                sigmoid="linear",
            )
            return stand(next_obs, action) * (5 * move + 1) / 6

        return reward

    return build


def _humanoid(move_speed: float, stand_height: float, upright_axis: int):
    def build(spec: EnvSpec) -> RewardFn:
        def reward(next_obs, action):
            o = _Obs(next_obs, spec)
            standing = tolerance(o["head_height"][..., 0], bounds=(stand_height, float("inf")), margin=stand_height / 4)
            # torso_vertical is xmat[torso, (zx, zy, zz)]: the humanoid's upright is zz, the CMU thorax's zy
            torso_upright = o["torso_vertical"][..., upright_axis]
            upright = tolerance(
                torso_upright, bounds=(0.9, float("inf")), sigmoid="linear", margin=1.9, value_at_margin=0
            )
            stand_reward = standing * upright
            small_control = _small_control(action)
            horizontal_velocity = o["com_velocity"][..., :2]
            if move_speed == 0:
                dont_move = tolerance(horizontal_velocity, margin=2).mean(-1)
                return small_control * stand_reward * dont_move
            move = tolerance(
                _norm(horizontal_velocity),
                bounds=(move_speed, float("inf")),
                margin=move_speed,
                value_at_margin=0,
                sigmoid="linear",
            )
            return small_control * stand_reward * (5 * move + 1) / 6

        return reward

    return build


REWARDS: dict[str, Callable[[EnvSpec], RewardFn]] = {
    "cartpole-balance": _cartpole(sparse=False),
    "cartpole-swingup": _cartpole(sparse=False),
    "cartpole-two_poles": _cartpole(sparse=False),
    "cartpole-three_poles": _cartpole(sparse=False),
    "cartpole-balance_sparse": _cartpole(sparse=True),
    "cartpole-swingup_sparse": _cartpole(sparse=True),
    "pendulum-swingup": _pendulum,
    "reacher-easy": _reacher,
    "reacher-hard": _reacher,
    "walker-stand": _walker_stand,
    "walker-walk": _walker(walker._WALK_SPEED),
    "walker-run": _walker(walker._RUN_SPEED),
    "hopper-stand": _hopper(hopping=False),
    "hopper-hop": _hopper(hopping=True),
    "cheetah-run": _cheetah,
    "humanoid-stand": _humanoid(0.0, humanoid._STAND_HEIGHT, upright_axis=2),
    "humanoid-walk": _humanoid(humanoid._WALK_SPEED, humanoid._STAND_HEIGHT, upright_axis=2),
    "humanoid-run": _humanoid(humanoid._RUN_SPEED, humanoid._STAND_HEIGHT, upright_axis=2),
    "humanoid_CMU-stand": _humanoid(0.0, humanoid_CMU._STAND_HEIGHT, upright_axis=1),
    "humanoid_CMU-walk": _humanoid(humanoid_CMU._WALK_SPEED, humanoid_CMU._STAND_HEIGHT, upright_axis=1),
    "humanoid_CMU-run": _humanoid(humanoid_CMU._RUN_SPEED, humanoid_CMU._STAND_HEIGHT, upright_axis=1),
}
