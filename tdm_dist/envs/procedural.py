"""The procedural walker universe (paper §4.3.2): generated locomotion bodies in four families.

Each body is a torso (a sphere with a free joint, resting on a floor) and 4 to 20 capsule links, each
with one actuated hinge at its base. Kinematic trees are built one link at a time; links are grouped into
straight *limbs* of 1 or 2 links. The families differ in where a new limb goes (paper §4.3.2):

* ``line``: always at the end of the previous limb, in the same direction; hinge axes uniform on the sphere.
* ``chain``: at the end of the previous limb, turned to one of the 5 axis-aligned directions that do not
  point back into it; hinge axes axis-aligned, across the link.
* ``bush``: at the end of any finished limb (or on the torso), turned as in chain; a limb is filled before
  any other limb starts, so limbs branch into several children.
* ``tree``: at the end of any link (or on the torso), in any direction (uniform on the sphere); limbs may
  grow after others have started; hinge axes uniform across the link.

The task rewards moving in +x at 1 m/s, with the reward of dm_control's corridor-run locomotion task.
Names are ``procwalker-<family>-<seed>``; the seed fixes the body (``procwalker-chain-0042`` and
``procwalker-chain-42`` are the same body under two names), the same seed gives the same MJCF byte for byte.
"""

from __future__ import annotations

import collections
import functools
import re
from dataclasses import dataclass, field

import mujoco
import numpy as np

from tdm_dist.envs.env import Env
from tdm_dist.envs.spec import EnvSpec
from tdm_dist.errors import ConfigError

FAMILIES = ("line", "chain", "bush", "tree")
MIN_JOINTS, MAX_JOINTS = 4, 20  # actuated hinges per body, as in the paper's experiments
EPISODE_LENGTH = 1000  # environment steps per episode, as for the suite tasks
TARGET_SPEED = 1.0  # m/s in +x
PHYSICS_TIMESTEP = 0.005  # seconds per simulator step (dm_control.locomotion's default)
CONTROL_TIMESTEP = 0.025  # seconds per environment step: 5 simulator steps
TORSO_RADIUS = 0.1  # m
LINK_LENGTH = (0.2, 0.4)  # m, uniform per link
LINK_RADIUS = (0.04, 0.06)  # m, uniform per link
JOINT_RANGE = 1.0  # rad, each hinge turns within ±JOINT_RANGE
GEAR_PER_LINK = 8.0  # N·m of peak torque per link on the lighter side of the hinge (Morphology.lighter_side)
REWARD_NOTE = (
    "the reward is the x-velocity of the whole body's centre of mass, which the observation (the torso's "
    "velocity, joint angles and velocities) does not determine without the body's masses"
)

_PREFIX = "procwalker-"
_NAME = re.compile(r"procwalker-(?P<family>[a-z]+)-(?P<seed>\d+)")
_AXES = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=float)


# --- names ---------------------------------------------------------------------------------------------


def is_procedural(name: str) -> bool:
    return name.startswith(_PREFIX)


def parse(name: str) -> tuple[str, int]:
    """``procwalker-<family>-<seed>`` -> (family, seed); ``ConfigError`` for anything else."""
    match = _NAME.fullmatch(name)
    if match is None:
        raise ConfigError(
            f"bad procedural walker name {name!r}: expected procwalker-<family>-<seed>, e.g. procwalker-chain-0042"
        )
    if match["family"] not in FAMILIES:
        raise ConfigError(
            f"unknown procedural walker family {match['family']!r} in {name!r}; expected one of {', '.join(FAMILIES)}"
        )
    return match["family"], int(match["seed"])


def env_name(family: str, seed: int) -> str:
    """The canonical name of a body: the seed with at least 4 digits, as in ``procwalker-chain-0042``."""
    return f"{_PREFIX}{family}-{seed:04d}"


# --- morphology ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Link:
    parent: int  # index of the parent link, -1 for the torso
    limb: int  # index of the limb the link belongs to
    direction: tuple[float, float, float]  # unit vector from the link's base to its tip, world frame at rest
    axis: tuple[float, float, float]  # hinge axis at the link's base, world frame at rest
    length: float  # m
    radius: float  # m


@dataclass(frozen=True)
class Morphology:
    family: str
    seed: int
    links: tuple[Link, ...]  # in construction order: a parent always comes before its children

    @property
    def dof(self) -> int:
        """Actuated hinges (one per link)."""
        return len(self.links)

    @property
    def limbs(self) -> int:
        return len({link.limb for link in self.links})

    @property
    def depth(self) -> int:
        """Links on the longest path from the torso to a tip."""
        depth: list[int] = []
        for link in self.links:
            depth.append(1 + (depth[link.parent] if link.parent >= 0 else 0))
        return max(depth)

    @property
    def branch_points(self) -> int:
        """The torso and links that carry two or more child links."""
        children = collections.Counter(link.parent for link in self.links)
        return sum(count >= 2 for count in children.values())

    @property
    def turns(self) -> float:
        """Fraction of the limbs hanging from a link that do not continue straight on from it."""
        turned = [
            not np.allclose(link.direction, self.links[link.parent].direction)
            for link in self.links
            if link.parent >= 0 and self.links[link.parent].limb != link.limb
        ]
        return float(np.mean(turned)) if turned else 0.0

    def lighter_side(self, index: int) -> int:
        """Links on the lighter side of the hinge of link ``index`` (the torso counts as one link).

        A hinge torque turns both sides; the lighter one limits how much torque stays stable.
        """
        beyond = self.subtree_links(index)
        return min(beyond, self.dof + 1 - beyond)

    def subtree_links(self, index: int) -> int:
        """Links the hinge of link ``index`` moves: the link and everything beyond it."""
        count = [1] * len(self.links)
        for i in range(len(self.links) - 1, -1, -1):
            if self.links[i].parent >= 0:
                count[self.links[i].parent] += count[i]
        return count[index]


@dataclass(eq=False)  # limbs are compared by identity
class _Limb:
    parent: int  # link the limb hangs from, -1 for the torso
    direction: np.ndarray  # every link of the limb points this way at rest
    capacity: int  # 1 or 2 links
    links: list[int] = field(default_factory=list)

    @property
    def full(self) -> bool:
        return len(self.links) >= self.capacity


def _unit(rng: np.random.Generator) -> np.ndarray:
    """A direction uniform on the sphere."""
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def _across(rng: np.random.Generator, direction: np.ndarray) -> np.ndarray:
    """A direction uniform on the circle perpendicular to ``direction``."""
    v = _unit(rng)
    v = v - v.dot(direction) * direction
    norm = np.linalg.norm(v)
    return v / norm if norm > 1e-6 else _across(rng, direction)


def _turn(rng: np.random.Generator, direction: np.ndarray) -> np.ndarray:
    """One of the 5 axis-aligned directions that do not point back into a limb along ``direction``."""
    options = [a for a in _AXES if not np.allclose(a, -direction)]
    return options[rng.integers(len(options))]


def _aligned_across(rng: np.random.Generator, direction: np.ndarray) -> np.ndarray:
    """An axis-aligned hinge axis across an axis-aligned link (2 choices up to sign)."""
    options = [a for a in _AXES[::2] if abs(a.dot(direction)) < 0.5]
    return options[rng.integers(len(options))]


def generate(family: str, seed: int) -> Morphology:
    """The body of ``procwalker-<family>-<seed>``: deterministic per (family, seed)."""
    if family not in FAMILIES:
        raise ConfigError(f"unknown procedural walker family {family!r}; expected one of {', '.join(FAMILIES)}")
    if seed < 0:
        raise ConfigError(f"procedural walker seed must be >= 0, got {seed}")
    rng = np.random.default_rng([FAMILIES.index(family), seed])
    n = int(rng.integers(MIN_JOINTS, MAX_JOINTS + 1))
    limbs: list[_Limb] = []
    links: list[Link] = []

    def start(parent: int, direction: np.ndarray) -> _Limb:
        limbs.append(_Limb(parent, np.round(direction, 4), int(rng.integers(1, 3))))
        return limbs[-1]

    def grow(limb: _Limb, axis: np.ndarray) -> None:
        parent = limb.links[-1] if limb.links else limb.parent
        length, radius = rng.uniform(*LINK_LENGTH), rng.uniform(*LINK_RADIUS)
        links.append(
            Link(
                parent=parent,
                limb=limbs.index(limb),
                direction=tuple(float(x) for x in limb.direction),
                axis=tuple(float(x) for x in np.round(axis, 4)),
                length=round(float(length), 3),
                radius=round(float(radius), 3),
            )
        )
        limb.links.append(len(links) - 1)

    tree = family == "tree"
    limb = start(-1, _unit(rng) if tree else _AXES[rng.integers(6)])
    for _ in range(n):
        if family in ("line", "chain") and limb.full:
            limb = start(limb.links[-1], limb.direction if family == "line" else _turn(rng, limb.direction))
        elif family == "bush" and limb.full:
            anchor = int(rng.integers(-1, len(limbs)))  # the torso or the end of any (finished) limb
            if anchor < 0:
                limb = start(-1, _AXES[rng.integers(6)])
            else:
                limb = start(limbs[anchor].links[-1], _turn(rng, limbs[anchor].direction))
        elif tree and links:
            growing = [lb for lb in limbs if not lb.full]
            if growing and rng.random() < 0.5:
                limb = growing[rng.integers(len(growing))]
            else:
                limb = start(int(rng.integers(-1, len(links))), _unit(rng))  # the torso or the end of any link
        if family == "line":
            axis = _unit(rng)
        elif tree:
            axis = _across(rng, limb.direction)
        else:
            axis = _aligned_across(rng, limb.direction)
        grow(limb, axis)
    return Morphology(family, seed, tuple(links))


# --- MJCF ---------------------------------------------------------------------------------------------


def _fmt(v) -> list[float]:
    return [round(float(x), 4) for x in np.atleast_1d(v)]


def build_mjcf(morphology: Morphology):
    """The ``dm_control.mjcf`` model of a body on a floor; ``to_xml_string()`` is deterministic."""
    from dm_control import mjcf

    m = morphology
    root = mjcf.RootElement(model=env_name(m.family, m.seed))
    root.compiler.angle = "radian"
    root.option.timestep = PHYSICS_TIMESTEP
    # Links touch the floor but not each other: limbs that share an attachment point overlap by design.
    root.default.geom.set_attributes(
        contype=1, conaffinity=0, condim=3, friction=[1, 0.005, 0.0001], rgba=[0.8, 0.55, 0.3, 1]
    )
    # Armature (rotor inertia) keeps hinges whose axis runs nearly along their capsule, with almost no inertia
    # of their own, stable at this timestep (0.02 let 1 of 800 bodies blow up under random actions).
    root.default.joint.set_attributes(limited=True, range=[-JOINT_RANGE, JOINT_RANGE], damping=1.0, armature=0.05)
    root.default.motor.set_attributes(ctrllimited=True, ctrlrange=[-1, 1])
    root.visual.headlight.set_attributes(ambient=[0.4, 0.4, 0.4], diffuse=[0.6, 0.6, 0.6])
    root.asset.add(
        "texture",
        name="grid",
        type="2d",
        builtin="checker",
        rgb1=[0.2, 0.3, 0.4],
        rgb2=[0.1, 0.2, 0.3],
        width=256,
        height=256,
        mark="edge",
        markrgb=[0.3, 0.4, 0.5],
    )
    root.asset.add("material", name="grid", texture="grid", texrepeat=[1, 1], texuniform=True, reflectance=0.0)
    root.worldbody.add("light", name="top", pos=[0, 0, 6], dir=[0, 0, -1], directional=True)
    root.worldbody.add(
        "geom", name="floor", type="plane", size=[40, 40, 0.1], material="grid", contype=1, conaffinity=1
    )

    torso = root.worldbody.add("body", name="torso", pos=[0, 0, 1])
    torso.add("freejoint", name="root")
    torso.add("geom", name="torso", type="sphere", size=[TORSO_RADIUS], rgba=[0.3, 0.5, 0.8, 1])
    bodies = []
    for i, link in enumerate(m.links):
        if link.parent < 0:
            parent, pos = torso, np.multiply(link.direction, TORSO_RADIUS)
        else:
            up = m.links[link.parent]
            parent, pos = bodies[link.parent], np.multiply(up.direction, up.length)
        body = parent.add("body", name=f"link_{i:02d}", pos=_fmt(pos))
        body.add("joint", name=f"hinge_{i:02d}", type="hinge", axis=_fmt(link.axis))
        body.add(
            "geom",
            name=f"link_{i:02d}",
            type="capsule",
            size=[link.radius],
            fromto=_fmt([0, 0, 0, *np.multiply(link.direction, link.length)]),
        )
        bodies.append(body)
    for i in range(m.dof):
        gear = GEAR_PER_LINK * m.lighter_side(i)
        root.actuator.add("motor", name=f"motor_{i:02d}", joint=f"hinge_{i:02d}", gear=[round(gear, 3)])
    return root


# --- task ---------------------------------------------------------------------------------------------


def _lowest_point(physics) -> float:
    """Height of the lowest point of the body (spheres and capsules only), from the current kinematics."""
    model, data = physics.model, physics.data
    lowest = np.inf
    for g in range(1, model.ngeom):  # geom 0 is the floor
        z, size = data.geom_xpos[g, 2], model.geom_size[g]
        if model.geom_type[g] == mujoco.mjtGeom.mjGEOM_CAPSULE:
            z = z - abs(data.geom_xmat[g, 8]) * size[1]  # the capsule's lower end: its axis is the frame's z
        lowest = min(lowest, z - size[0])
    return float(lowest)


def _task_class():
    from dm_control.suite import base
    from dm_control.utils import rewards

    class Run(base.Task):
        """Move in +x at TARGET_SPEED; episodes start from a small random pose just above the floor."""

        def initialize_episode(self, physics):
            model = physics.model
            physics.data.qpos[7:] = self.random.uniform(-0.2, 0.2, size=model.nq - 7)
            physics.data.qpos[:7] = [0, 0, 1, 1, 0, 0, 0]
            physics.forward()
            physics.data.qpos[2] += 0.05 - _lowest_point(physics)  # drop from 5 cm above the floor
            super().initialize_episode(physics)

        def get_observation(self, physics):
            data = physics.data
            rotation = data.xmat[1].reshape(3, 3)  # the torso's frame in world coordinates
            obs = collections.OrderedDict()
            obs["joint_angles"] = data.qpos[7:].copy()
            obs["joint_velocities"] = data.qvel[6:].copy()
            obs["root_orientation"] = data.xmat[1].copy()  # rows: the world's axes in the torso's frame
            obs["root_height"] = data.qpos[2:3].copy()
            obs["root_velocity"] = rotation.T @ data.qvel[:3]  # egocentric linear velocity
            obs["root_angular_velocity"] = data.qvel[3:6].copy()  # the free joint's is already egocentric
            return obs

        def get_reward(self, physics):
            # dm_control/locomotion/tasks/corridors.py, RunThroughCorridor.get_reward: the x-velocity of the
            # walker's centre of mass (subtree_linvel of its root body), 1 at the target speed, falling
            # linearly to 0 at standing still and at twice the target speed.
            mujoco.mj_subtreeVel(physics.model.ptr, physics.data.ptr)
            x_velocity = physics.data.subtree_linvel[1, 0]
            return rewards.tolerance(
                x_velocity, (TARGET_SPEED, TARGET_SPEED), margin=TARGET_SPEED, sigmoid="linear", value_at_margin=0.0
            )

    return Run


def load(name: str, seed: int | None = None):
    """The dm_control ``control.Environment`` of a procedural walker; ``seed`` fixes the episode randomness."""
    from dm_control import mjcf
    from dm_control.rl import control

    family, body_seed = parse(name)
    physics = mjcf.Physics.from_mjcf_model(build_mjcf(generate(family, body_seed)))
    task = _task_class()(random=seed)
    return control.Environment(
        physics, task, time_limit=EPISODE_LENGTH * CONTROL_TIMESTEP, control_timestep=CONTROL_TIMESTEP
    )


@functools.lru_cache
def spec(name: str, action_repeat: int = 1) -> EnvSpec:
    env = load(name, seed=0)
    return EnvSpec(
        name=name,
        obs_keys=tuple((k, int(np.prod(v.shape))) for k, v in env.observation_spec().items()),
        act_dim=int(np.prod(env.action_spec().shape)),
        control_timestep=CONTROL_TIMESTEP * action_repeat,
        episode_length=EPISODE_LENGTH // action_repeat,  # dm_control's time limit counts simulator steps
        action_repeat=action_repeat,
        has_reward_from_obs=False,
        reward_note=REWARD_NOTE,
    )


def make(name: str, seed: int | None = None, action_repeat: int = 1) -> Env:
    return Env(load(name, seed), spec(name, action_repeat))


def family_stats(family: str, seeds: range) -> dict[str, list]:
    """Structure statistics of a family over seeds: per body dof, limbs, depth, branch points, turns."""
    bodies = [generate(family, seed) for seed in seeds]
    return {
        "dof": [m.dof for m in bodies],
        "limbs": [m.limbs for m in bodies],
        "depth": [m.depth for m in bodies],
        "branch_points": [m.branch_points for m in bodies],
        "turns": [m.turns for m in bodies],
    }
