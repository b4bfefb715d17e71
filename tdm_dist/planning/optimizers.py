"""Sampling-based trajectory optimizers and the MPC layer on top of them (mbrl-lib's layering).

An optimizer sees only ``objective(actions [K, N, m] in [-1, 1]) -> returns [K]`` (higher is better) and
returns the best action sequence [N, m] it found; it knows nothing of models, environments or Ray.
``MPCPlanner`` adds what persists between environment steps: the random generator and the warm start.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tdm_dist.errors import ConfigError, DataError
from tdm_dist.planning.noise import colored_noise

Objective = Callable[[np.ndarray], np.ndarray]

KINDS = ("shooting", "cem", "proposal")


@dataclass
class PlannerConfig:
    kind: str = "shooting"  # "shooting" (paper §4.1), "cem" (iCEM, Pinneri et al. 2020), "proposal" (§5.1.1)
    samples: int = 128  # K: candidate action sequences scored per iteration
    horizon: int = 20  # N: environment steps each candidate looks ahead
    beta: float = 2.0  # exponent of the colored noise: 2 Brownian (paper default), 1 pink, 0 white
    variance: float = 2.0  # noise variance per action entry before clipping (paper: 2); CEM's initial variance
    iterations: int = 1  # CEM: sample-score-refit rounds per environment step (shooting uses 1)
    elites: int = 10  # CEM: best candidates that refit the sampling distribution and carry to the next round
    alpha: float = 0.1  # CEM: momentum, the weight of the old mean and std in each refit (0: none)
    sigma: float = 0.3  # proposal: std of the colored noise added to the model's BC actions
    warm_start: bool = False  # start from the previous solution, shifted by the steps taken since (paper: off)
    replan_every: int = 1  # environment steps between optimizations; in between the plan runs open loop (paper: 1)
    seed: int | None = None  # seed of the planner's random generator (None: fresh entropy)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"planner kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        for name in ("samples", "horizon", "iterations", "elites", "replan_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ConfigError(f"planner {name} must be an integer >= 1, got {value!r}")
        if self.kind == "cem" and self.elites > self.samples:
            raise ConfigError(f"planner elites ({self.elites}) must not exceed samples ({self.samples})")
        if self.replan_every > self.horizon:
            raise ConfigError(f"planner replan_every ({self.replan_every}) must not exceed horizon ({self.horizon})")
        if not (np.isfinite(self.beta) and self.beta >= 0):
            raise ConfigError(f"planner beta must be >= 0, got {self.beta}")
        if not (np.isfinite(self.variance) and self.variance > 0):
            raise ConfigError(f"planner variance must be > 0, got {self.variance}")
        if not (np.isfinite(self.sigma) and self.sigma >= 0):
            raise ConfigError(f"planner sigma must be >= 0, got {self.sigma}")
        if not 0 <= self.alpha < 1:
            raise ConfigError(f"planner alpha must be in [0, 1), got {self.alpha}")

    def replace(self, **changes) -> PlannerConfig:
        return dataclasses.replace(self, **changes)


def _score(objective: Objective, actions: np.ndarray) -> np.ndarray:
    values = np.asarray(objective(actions), dtype=np.float64)
    if values.shape != actions.shape[:1]:
        raise DataError(f"objective must return one value per candidate, shape {actions.shape[:1]}, got {values.shape}")
    return np.where(np.isnan(values), -np.inf, values)  # a diverged candidate is never the best


def shift(solution: np.ndarray, steps: int = 1) -> np.ndarray:
    """The warm start: ``solution`` [N, m] advanced ``steps``, its last action repeated (mbrl-lib's roll(-steps))."""
    return np.concatenate([solution[steps:], np.repeat(solution[-1:], steps, axis=0)], axis=0)


class RandomShooting:
    """K colored-noise sequences clipped to [-1, 1]; the best one wins (paper §4.1)."""

    def __init__(self, cfg: PlannerConfig, act_dim: int, rng: np.random.Generator):
        self.cfg, self.act_dim, self.rng = cfg, act_dim, rng

    def optimize(self, objective: Objective, initial: np.ndarray | None = None) -> np.ndarray:
        """-> the best of K sampled sequences, [N, m]; ``initial`` [N, m], when given, is one of the candidates."""
        c = self.cfg
        actions = np.clip(colored_noise(c.beta, c.samples, c.horizon, self.act_dim, self.rng, c.variance), -1, 1)
        if initial is not None:
            actions[0] = initial
        return actions[np.argmax(_score(objective, actions))]


class CEM:
    """The cross-entropy method in the style of iCEM (Pinneri et al. 2020).

    Each round samples K sequences around a mean with a per-step std, with colored noise; the elites refit the
    mean and std (with momentum) and are kept as candidates of the next round, and the last round also tries
    the mean itself. The best sequence seen in any round is returned, not the mean.
    """

    def __init__(self, cfg: PlannerConfig, act_dim: int, rng: np.random.Generator):
        self.cfg, self.act_dim, self.rng = cfg, act_dim, rng

    def optimize(self, objective: Objective, initial: np.ndarray | None = None) -> np.ndarray:
        """-> the best sequence found, [N, m]; ``initial`` [N, m] is the first mean (else zeros) and a candidate."""
        c = self.cfg
        mean = np.zeros((c.horizon, self.act_dim)) if initial is None else np.array(initial, dtype=np.float64)
        std = np.full((c.horizon, self.act_dim), np.sqrt(c.variance))
        best, best_value, elites = mean, -np.inf, None
        for it in range(c.iterations):
            noise = colored_noise(c.beta, c.samples, c.horizon, self.act_dim, self.rng, variance=1.0)
            actions = np.clip(mean + std * noise, -1, 1)  # [K, N, m]
            if elites is not None:
                actions[: len(elites)] = elites
            elif initial is not None:
                actions[0] = initial
            if it == c.iterations - 1:
                actions[-1] = np.clip(mean, -1, 1)
            values = _score(objective, actions)
            order = np.argsort(-values, kind="stable")
            elites = actions[order[: c.elites]]
            if values[order[0]] > best_value:
                best, best_value = actions[order[0]], values[order[0]]
            mean = c.alpha * mean + (1 - c.alpha) * elites.mean(0)
            std = c.alpha * std + (1 - c.alpha) * elites.std(0)
        return best.copy()


class Proposal:
    """The proposal planner (paper §5.1.1): the model's BC policy gives mean actions along each imagined
    trajectory, colored noise of std ``sigma`` makes K candidates of them; the best one wins.

    The objective must offer ``propose(noise [K, N, m]) -> (values [K], actions [K, N, m])``
    (``planning.models.ModelObjective`` does, for models with a policy).
    """

    def __init__(self, cfg: PlannerConfig, act_dim: int, rng: np.random.Generator):
        self.cfg, self.act_dim, self.rng = cfg, act_dim, rng

    def optimize(self, objective, initial: np.ndarray | None = None) -> np.ndarray:
        c = self.cfg
        if not hasattr(objective, "propose"):
            raise ConfigError("the proposal planner needs an objective with a model that has a policy (the TDM)")
        noise = colored_noise(c.beta, c.samples, c.horizon, self.act_dim, self.rng, variance=c.sigma**2)
        values, actions = objective.propose(noise)
        values = _score(lambda _: values, actions)
        return np.asarray(actions[np.argmax(values)], dtype=np.float64)


OPTIMIZERS = {"shooting": RandomShooting, "cem": CEM, "proposal": Proposal}


class MPCPlanner:
    """The trajectory-optimizer layer: optimizes a sequence, returns its actions one per step, warm-starts the next.

    ``plan(objective) -> action [m]``; call ``reset()`` at the start of every episode. The optimizer runs every
    ``replan_every`` steps (mbrl-lib's ``replan_freq``); in between, ``objective`` is not called.
    """

    def __init__(self, cfg: PlannerConfig, act_dim: int):
        if int(act_dim) != act_dim or act_dim < 1:
            raise ConfigError(f"act_dim must be an integer >= 1, got {act_dim}")
        self.cfg, self.act_dim = cfg, int(act_dim)
        self.rng = np.random.default_rng(cfg.seed)
        self.optimizer = OPTIMIZERS[cfg.kind](cfg, self.act_dim, self.rng)
        self.solution: np.ndarray | None = None  # the last plan, [N, m]
        self.used = 0  # actions of ``solution`` returned so far

    def reset(self, seed: int | None = None) -> None:
        """Forget the previous solution; with a seed, restart the random generator from it."""
        self.solution, self.used = None, 0
        if seed is not None:
            self.rng = self.optimizer.rng = np.random.default_rng(seed)

    def plan(self, objective: Objective) -> np.ndarray:
        """-> the next action [m]: the first of the best sequence for ``objective`` when it is time to re-plan."""
        if self.solution is None or self.used >= self.cfg.replan_every:
            warm = self.cfg.warm_start and self.solution is not None
            self.solution = self.optimizer.optimize(objective, shift(self.solution, self.used) if warm else None)
            self.used = 0
        self.used += 1
        return self.solution[self.used - 1].copy()
