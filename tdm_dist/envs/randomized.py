"""Randomized variants of the suite tasks (paper §4.3.1): the same task with other physical parameters.

The paper pre-trains on the 28 suite tasks and on "versions of these environments with randomized
parameters", so that a generalist sees the same kind of body with different dynamics. A variant is named
by appending ``@rand<seed>`` to a suite task:

* ``walker-stand@rand3``: every factor drawn uniformly from [1 - SPREAD, 1 + SPREAD] with seed 3;
* ``walker-stand@rand3:0.4``: the same with spread 0.4 (0 <= spread < 1).

Observation keys, dimensions and the reward are those of the base task; only the dynamics differ.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import mujoco
import numpy as np

from tdm_dist.errors import ConfigError

SPREAD = 0.2  # default half-width of the uniform scale factors: each factor lies in [0.8, 1.2]

_NAME = re.compile(r"(?P<base>[^@]+)@rand(?P<seed>\d+)(?::(?P<spread>\d*\.?\d+))?")
# Primitive shapes whose collision geometry is fully described by geom_size; planes are infinite and
# meshes/height fields keep their own vertices, so scaling their size would only change what is drawn.
_SCALABLE = [
    mujoco.mjtGeom.mjGEOM_SPHERE,
    mujoco.mjtGeom.mjGEOM_CAPSULE,
    mujoco.mjtGeom.mjGEOM_ELLIPSOID,
    mujoco.mjtGeom.mjGEOM_CYLINDER,
    mujoco.mjtGeom.mjGEOM_BOX,
]


@dataclass(frozen=True)
class Variant:
    base: str  # the suite task, e.g. "walker-stand"
    seed: int  # seed of the scale factors
    spread: float  # factors are uniform in [1 - spread, 1 + spread]


def parse(name: str) -> Variant | None:
    """The variant a name denotes, or None for a name without ``@``; ``ConfigError`` for a malformed one."""
    if "@" not in name:
        return None
    match = _NAME.fullmatch(name)
    if match is None:
        raise ConfigError(
            f"bad randomized environment name {name!r}: expected <suite-task>@rand<seed> or "
            "<suite-task>@rand<seed>:<spread>, e.g. walker-stand@rand3 or walker-stand@rand3:0.4"
        )
    spread = float(match["spread"]) if match["spread"] is not None else SPREAD
    if not 0 <= spread < 1:
        raise ConfigError(f"spread of {name!r} must be in [0, 1) so that every factor stays positive, got {spread}")
    return Variant(match["base"], int(match["seed"]), spread)


def base_name(name: str) -> str:
    """The suite task a (possibly randomized) name is built on."""
    variant = parse(name)
    return variant.base if variant else name


def randomize(physics, seed: int, spread: float) -> None:
    """Scale the physical parameters of a loaded model in place, deterministically per seed.

    Every body's mass (with its rotational inertia, so that the density changes, not the shape), every
    primitive geom's size, every geom's friction, every dof's damping and every actuator's gear get their
    own factor from U[1 - spread, 1 + spread]. The factors are drawn for all entries in a fixed order, so
    a seed gives the same model every time. ``Environment.reset`` leaves the model alone, so the scaling
    lasts; only parameters a task sets itself at each episode start keep the task's value (reacher's
    target size, finger-spin's hinge damping).
    """
    model, rng = physics.model, np.random.default_rng(seed)

    def factors(*shape: int) -> np.ndarray:
        return rng.uniform(1 - spread, 1 + spread, size=shape)

    body = factors(model.nbody)
    model.body_mass[:] *= body
    model.body_inertia[:] *= body[:, None]
    # Collision uses the bounding radius and box of each geom, computed at compile time: scale them with it.
    geom = np.where(np.isin(model.geom_type, _SCALABLE), factors(model.ngeom), 1.0)
    model.geom_size[:] *= geom[:, None]
    model.geom_rbound[:] *= geom
    model.geom_aabb[:] *= geom[:, None]
    model.geom_friction[:] *= factors(model.ngeom)[:, None]
    model.dof_damping[:] *= factors(model.nv)
    model.actuator_gear[:, 0] *= factors(model.nu)
    # The per-body bounding-volume trees of the midphase are compiled too; without them MuJoCo tests
    # every geom pair of two colliding bodies, which is exact for the scaled sizes.
    model.ptr.opt.disableflags |= mujoco.mjtDisableBit.mjDSBL_MIDPHASE
    # Derived constants (subtree masses, which subtree_linvel divides by; inverse weights) follow the masses.
    mujoco.mj_setConst(model.ptr, physics.data.ptr)


def load(name: str, seed: int | None):
    """The dm_control environment of a suite task or of a randomized variant of one."""
    from dm_control import suite

    variant = parse(name)
    domain, task = (variant.base if variant else name).split("-", 1)
    env = suite.load(domain, task, task_kwargs={"random": seed})
    if variant is not None:
        randomize(env.physics, variant.seed, variant.spread)
    return env
