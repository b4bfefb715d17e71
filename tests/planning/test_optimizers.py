"""Optimizers on a known objective; the MPC layer's warm start and re-planning."""

from __future__ import annotations

import numpy as np
import pytest

from tdm_dist.errors import ConfigError, DataError
from tdm_dist.planning.optimizers import CEM, MPCPlanner, PlannerConfig, RandomShooting, shift

N, M = 10, 2
TARGET = 0.6 * np.sin(np.linspace(0, 3, N))[:, None] * np.array([1.0, -1.0])  # [N, m] inside the box


def quadratic(actions: np.ndarray) -> np.ndarray:
    """Highest (0) at TARGET."""
    return -((actions - TARGET) ** 2).sum(axis=(1, 2))


def error(solution: np.ndarray) -> float:
    return float(np.sqrt(((solution - TARGET) ** 2).mean()))


def test_cem_far_better_than_shooting():
    cfg = PlannerConfig(samples=64, horizon=N, variance=0.5, elites=8, seed=0)
    shooting = RandomShooting(cfg, M, np.random.default_rng(0)).optimize(quadratic)
    cem = CEM(cfg.replace(kind="cem", iterations=10), M, np.random.default_rng(0)).optimize(quadratic)
    assert shooting.shape == cem.shape == (N, M)
    assert error(cem) < 0.1
    assert error(cem) < 0.25 * error(shooting)
    assert np.abs(cem).max() <= 1


def test_cem_returns_the_best_candidate_it_scored():
    seen = []

    def objective(actions):
        seen.append(actions.copy())
        return quadratic(actions)

    best = CEM(PlannerConfig(kind="cem", samples=16, horizon=N, iterations=3, elites=4), M, np.random.default_rng(1))
    solution = best.optimize(objective)
    scored = np.concatenate(seen)
    assert len(seen) == 3
    assert quadratic(solution[None])[0] == quadratic(scored).max()


def test_initial_solution_is_a_candidate():
    for kind in ("shooting", "cem"):
        cfg = PlannerConfig(kind=kind, samples=8, horizon=N, iterations=2, elites=2)
        optimizer = (RandomShooting if kind == "shooting" else CEM)(cfg, M, np.random.default_rng(0))
        np.testing.assert_array_equal(optimizer.optimize(quadratic, initial=TARGET), TARGET)


def test_shift_repeats_the_last_step():
    solution = np.arange(8.0).reshape(4, 2)
    np.testing.assert_array_equal(shift(solution), [[2, 3], [4, 5], [6, 7], [6, 7]])
    np.testing.assert_array_equal(shift(solution, 3), [[6, 7]] * 4)


class Recorder:
    """A stand-in optimizer that remembers its warm starts and returns a fresh known plan."""

    def __init__(self):
        self.initials, self.calls = [], 0

    def optimize(self, objective, initial=None):
        self.initials.append(initial)
        self.calls += 1
        return np.full((N, M), float(self.calls)) + np.arange(N)[:, None]


def test_warm_start_shifts_previous_solution():
    planner = MPCPlanner(PlannerConfig(horizon=N, warm_start=True), M)
    planner.optimizer = recorder = Recorder()
    first = planner.plan(quadratic)
    previous = planner.solution.copy()
    planner.plan(quadratic)
    np.testing.assert_array_equal(first, previous[0])
    assert recorder.initials[0] is None
    np.testing.assert_array_equal(recorder.initials[1], shift(previous))
    planner.reset()
    planner.plan(quadratic)
    assert recorder.initials[2] is None


def test_replan_every_runs_the_plan_open_loop():
    planner = MPCPlanner(PlannerConfig(horizon=N, warm_start=True, replan_every=3), M)
    planner.optimizer = recorder = Recorder()
    actions = [planner.plan(quadratic) for _ in range(4)]
    assert recorder.calls == 2
    np.testing.assert_array_equal(np.array(actions)[:, 0], [1, 2, 3, 2])  # plan 1, steps 0..2; then plan 2, step 0
    np.testing.assert_array_equal(recorder.initials[1], shift(np.full((N, M), 1.0) + np.arange(N)[:, None], 3))


def test_no_warm_start_by_default():
    planner = MPCPlanner(PlannerConfig(horizon=N), M)
    planner.optimizer = recorder = Recorder()
    planner.plan(quadratic), planner.plan(quadratic)
    assert recorder.initials == [None, None]


def test_seeded_planner_is_reproducible():
    cfg = PlannerConfig(kind="cem", samples=16, horizon=N, iterations=2, elites=4, seed=3)
    a = MPCPlanner(cfg, M).plan(quadratic)
    b = MPCPlanner(cfg, M).plan(quadratic)
    np.testing.assert_array_equal(a, b)


def test_nan_candidates_never_win_and_bad_objectives_are_caught():
    def nan_for_first_half(actions):
        values = quadratic(actions)
        values[: len(values) // 2] = np.nan
        return values

    cfg = PlannerConfig(samples=8, horizon=N)
    assert np.isfinite(quadratic(RandomShooting(cfg, M, np.random.default_rng(0)).optimize(nan_for_first_half)[None]))
    with pytest.raises(DataError, match="one value per candidate"):
        RandomShooting(cfg, M, np.random.default_rng(0)).optimize(lambda a: np.zeros(3))


@pytest.mark.parametrize(
    ("changes", "name"),
    [
        ({"kind": "mppi"}, "kind"),
        ({"samples": 0}, "samples"),
        ({"horizon": 0}, "horizon"),
        ({"kind": "cem", "samples": 4, "elites": 5}, "elites"),
        ({"variance": 0.0}, "variance"),
        ({"alpha": 1.0}, "alpha"),
        ({"replan_every": 30}, "replan_every"),
    ],
)
def test_config_validation(changes, name):
    with pytest.raises(ConfigError, match=name):
        PlannerConfig(**changes)
