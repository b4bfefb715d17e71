"""Batched ground-truth rollouts: what K action sequences do from an environment's current state.

The ground-truth model of the paper (§5.1) and the data-collection expert plan with these. Two paths give the
same rewards and observations as ``Env.step`` (tests/planning/test_rollout.py holds them to 1e-6):

* fast: ``mujoco.rollout`` steps all K sequences in C on a scratch ``MjData``; observations are computed from the
  rolled-out states by a vectorized per-domain ``obs_from_state`` and scored with ``envs.reward_fn``. Used where
  both exist (cartpole, pendulum).
* replay: every sequence goes through dm_control's own ``before_step``, ``physics.step``, ``get_reward`` and
  ``get_observation``, exact for every task but at Python speed (~50-100 µs a step). Setting rolled-out states
  on the physics and calling ``forward`` would not be: after a dm_control step the acceleration-stage sensors
  (touch, accelerometer) still hold the values of the last sub-step's start, and the solver's warm start differs.

Either way the environment's simulator state is left exactly as it was.
"""

from __future__ import annotations

from collections.abc import Callable

import mujoco
import numpy as np
from mujoco import rollout as mj_rollout

from tdm_dist.envs.env import Env
from tdm_dist.envs.rewards import REWARDS
from tdm_dist.errors import DataError

_FULLPHYSICS = mujoco.mjtState.mjSTATE_FULLPHYSICS  # time, qpos, qvel, act (, history, plugin state)

# --- observations from simulator states, per domain --------------------------------------------------
# Each maps qpos [..., nq], qvel [..., nv] to the task's observation dict, entry for entry as its
# get_observation computes it from the physics.


def _cartpole_obs(qpos: np.ndarray, qvel: np.ndarray) -> dict[str, np.ndarray]:
    # bounded_position: cart position, then each pole's xmat (zz, xz) = (cos, sin) of its absolute angle,
    # the sum of the hinge angles down the chain (every hinge turns about +y)
    angle = np.cumsum(qpos[..., 1:], axis=-1)
    poles = np.stack([np.cos(angle), np.sin(angle)], axis=-1).reshape(*angle.shape[:-1], -1)
    return {"position": np.concatenate([qpos[..., :1], poles], axis=-1), "velocity": qvel}


def _pendulum_obs(qpos: np.ndarray, qvel: np.ndarray) -> dict[str, np.ndarray]:
    return {"orientation": np.stack([np.cos(qpos[..., 0]), np.sin(qpos[..., 0])], axis=-1), "velocity": qvel}


OBS_FROM_STATE: dict[str, Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]]] = {
    "cartpole": _cartpole_obs,
    "pendulum": _pendulum_obs,
}


def has_fast_path(env: Env) -> bool:
    """Whether ``rollout`` runs in C for this env (an ``obs_from_state`` and a ``reward_from_obs`` exist)."""
    return env.spec.name.split("-", 1)[0] in OBS_FROM_STATE and env.spec.name in REWARDS


def rollout(
    env: Env, actions: np.ndarray, observations: bool = False, *, threads: int = 1, replay: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Roll K action sequences out from the env's current state -> rewards [K, N] (, next observations [K, N, n]).

    actions: [K, N, m] in [-1, 1] (clipped, then mapped onto the task's bounds exactly as ``Env.step`` does).
    rewards[k, t] and observations[k, t] are what ``env.step(actions[k, t])`` would return at step t.
    ``threads``: simulator threads of the fast path. ``replay``: use the exact Python path even where a fast
    one exists. The env's simulator state is unchanged afterwards.
    """
    actions = np.asarray(actions, dtype=np.float64)
    if actions.ndim != 3 or actions.shape[2] != env.spec.act_dim or 0 in actions.shape:
        raise DataError(f"actions for {env.spec.name} must be [K, N, {env.spec.act_dim}], got {actions.shape}")
    if not np.all(np.isfinite(actions)):
        raise DataError(f"actions for {env.spec.name} must be finite")
    clipped = np.clip(actions, -1.0, 1.0)
    native = env._offset + env._scale * clipped
    if has_fast_path(env) and not replay:
        return _fast(env, clipped, native, observations, threads)
    return _replay(env, native, observations)


def _fast(env: Env, clipped: np.ndarray, native: np.ndarray, observations: bool, threads: int):
    spec, physics = env.spec, env.physics
    model, data = physics.model.ptr, physics.data.ptr
    K, N, m = clipped.shape
    if model.nu != m:
        raise DataError(f"{spec.name}: the model has {model.nu} actuators, the action {m} entries")
    repeat, sub_steps = spec.action_repeat, env.dm_env._n_sub_steps
    initial = np.empty(mujoco.mj_stateSize(model, _FULLPHYSICS))
    mujoco.mj_getState(model, data, initial, _FULLPHYSICS)
    control = np.repeat(native, repeat * sub_steps, axis=1)  # [K, N * repeat * sub_steps, nu]
    scratch = [mujoco.MjData(model) for _ in range(max(1, threads))]
    states, _ = mj_rollout.rollout(
        model,
        scratch if threads > 1 else scratch[0],
        np.broadcast_to(initial, (K, initial.size)),
        control,
        initial_warmstart=np.broadcast_to(data.qacc_warmstart, (K, model.nv)),
        persistent_pool=threads > 1,
    )
    # dm_control computes reward and observation after every n_sub_steps; Env.step sums `repeat` of those rewards
    states = states[:, sub_steps - 1 :: sub_steps]  # [K, N * repeat, nstate]
    qpos = states[..., 1 : 1 + model.nq]  # the state is (time, qpos, qvel, ...)
    qvel = states[..., 1 + model.nq : 1 + model.nq + model.nv]
    obs_dict = OBS_FROM_STATE[spec.name.split("-", 1)[0]](qpos, qvel)
    obs = np.concatenate([obs_dict[k].reshape(K, N * repeat, size) for k, size in spec.obs_keys], axis=-1)
    step_rewards = REWARDS[spec.name](spec)(obs, np.repeat(clipped, repeat, axis=1))  # [K, N * repeat]
    rewards = step_rewards.reshape(K, N, repeat).sum(-1)
    if not observations:
        return rewards
    return rewards, obs[:, repeat - 1 :: repeat]


def _replay(env: Env, native: np.ndarray, observations: bool):
    physics, task = env.physics, env.dm_env.task
    model, data = physics.model.ptr, physics.data.ptr
    K, N, _ = native.shape
    sub_steps = env.dm_env._n_sub_steps
    rewards = np.zeros((K, N))
    obs = np.empty((K, N, env.spec.obs_dim)) if observations else None
    saved = mujoco.MjData(model)
    mujoco.mj_copyData(saved, model, data)  # everything, so the env continues exactly as before
    try:
        for k in range(K):
            mujoco.mj_copyData(data, model, saved)
            for t in range(N):
                for _ in range(env.spec.action_repeat):  # dm_control's Environment.step, minus its bookkeeping
                    task.before_step(native[k, t], physics)
                    physics.step(sub_steps)
                    task.after_step(physics)
                    rewards[k, t] += task.get_reward(physics) or 0.0
                if observations:
                    obs[k, t] = env._flatten(task.get_observation(physics))
    finally:
        mujoco.mj_copyData(data, model, saved)
    return (rewards, obs) if observations else rewards
