"""Every environment by name: ``make(name)``, ``spec(name)``, ``reward_fn(name)``.

Names are ``domain-task`` for the dm_control suite (``cartpole-swingup``, ``walker-stand``, ...),
``domain-task@rand<seed>[:<spread>]`` for its randomized variants (``walker-stand@rand3``, see
``randomized.py``) and ``procwalker-<family>-<seed>`` for the procedural walker universe
(``procwalker-chain-0042``, see ``procedural.py``). ``names()`` lists the suite tasks only: the other two
are unbounded families.
"""

from __future__ import annotations

import difflib
import re

from tdm_dist.envs import procedural, randomized, suite
from tdm_dist.envs.env import Env
from tdm_dist.envs.rewards import REWARDS, RewardFn
from tdm_dist.envs.spec import EnvSpec
from tdm_dist.errors import ConfigError

_RANGE = re.compile(r"(?P<head>.*?)(?P<first>\d+)\.\.(?P<last>\d+)(?P<tail>.*)")
MAX_EXPANDED = 100_000  # a guard against a typo like 0..99999999


def names() -> list[str]:
    """The suite task names (each also has randomized variants ``name@rand<seed>``)."""
    return suite.task_names()


def _check(name: str) -> str:
    """Raise ``ConfigError`` for a name that denotes no environment, listing close matches."""
    if procedural.is_procedural(name):
        procedural.parse(name)  # raises for an unknown family or a bad seed
        return name
    base = randomized.base_name(name)  # raises for a malformed @rand suffix
    known = names()
    if base in known:
        return name
    close = difflib.get_close_matches(base, known, n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `tdm envs` lists them all"
    raise ConfigError(f"unknown environment {name!r}{hint}")


def expand(text: str) -> list[str]:
    """The environments a command-line ``--env`` names, validated, in order and without repeats.

    ``text`` is a comma-separated list of names, each of which may hold one inclusive integer range
    ``A..B``: ``procwalker-chain-0..99`` (100 bodies), ``walker-stand@rand0..9,cartpole-swingup``.
    Procedural walkers get their canonical name (``procwalker-chain-0007``), so two spellings of one body
    are one environment (and one dataset partition).
    """
    out: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            raise ConfigError(f"empty environment name in {text!r}; expected names separated by commas")
        match = _RANGE.fullmatch(item)
        if match is None:
            items = [item]
        else:
            first, last = int(match["first"]), int(match["last"])
            if first > last:
                raise ConfigError(f"empty range {first}..{last} in {item!r}; expected A..B with A <= B")
            if last - first + 1 > MAX_EXPANDED:
                raise ConfigError(f"{item!r} names {last - first + 1} environments; at most {MAX_EXPANDED} at once")
            items = [f"{match['head']}{i}{match['tail']}" for i in range(first, last + 1)]
        for name in items:
            _check(name)
            if procedural.is_procedural(name):
                name = procedural.env_name(*procedural.parse(name))
            if name not in out:
                out.append(name)
    return out


def spec(name: str, action_repeat: int = 1) -> EnvSpec:
    """The ``EnvSpec`` of a registered environment."""
    if action_repeat < 1:
        raise ConfigError(f"action_repeat must be >= 1, got {action_repeat}")
    if procedural.is_procedural(_check(name)):
        return procedural.spec(name, action_repeat)
    return suite.spec(name, action_repeat)


def make(name: str, seed: int | None = None, action_repeat: int = 1) -> Env:
    """A fresh environment instance; ``seed`` fixes the task's randomness (initial states, targets)."""
    spec(name, action_repeat)  # validates the name and the repeat
    if procedural.is_procedural(name):
        return procedural.make(name, seed, action_repeat)
    return suite.make(name, seed, action_repeat)


def reward_fn(name_or_spec: str | EnvSpec) -> RewardFn:
    """``reward(next_obs [..., n], action [..., m]) -> [...]`` for numpy or torch (paper eq. 5).

    Raises ``ConfigError`` for tasks whose reward is not a function of the observation; plan with
    predicted rewards there (eq. 6).
    """
    s = name_or_spec if isinstance(name_or_spec, EnvSpec) else spec(name_or_spec)
    if not s.has_reward_from_obs:
        raise ConfigError(f"{s.name} has no reward_from_obs: {s.reward_note}; plan with predicted rewards instead")
    return REWARDS[randomized.base_name(s.name)](s)


def reward_from_obs(name: str, next_obs, action):
    """One-off ``reward_fn(name)(next_obs, action)``."""
    return reward_fn(name)(next_obs, action)
