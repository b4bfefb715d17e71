"""colored_noise: shapes, variance, temporal correlation, argument checks."""

from __future__ import annotations

import numpy as np
import pytest

from tdm_dist.errors import ConfigError
from tdm_dist.planning.noise import colored_noise


def lag1_autocorrelation(x: np.ndarray) -> float:
    """Mean correlation of consecutive steps along axis 1 of x [K, N, m]."""
    a, b = x[:, :-1].ravel(), x[:, 1:].ravel()
    return float(np.corrcoef(a, b)[0, 1])


def test_shape_and_not_clipped():
    x = colored_noise(2.0, samples=7, horizon=30, act_dim=3, rng=np.random.default_rng(0))
    assert x.shape == (7, 30, 3) and x.dtype == np.float64
    assert np.abs(x).max() > 1  # variance 2: callers clip


@pytest.mark.parametrize("beta", [0.0, 1.0, 2.0])
@pytest.mark.parametrize(("variance", "horizon"), [(2.0, 25), (0.5, 24), (2.0, 2)])
def test_variance(beta, variance, horizon):
    # colorednoise's own output is 1.3 (Brownian, 25 steps) to 4 (2 steps) times too large; see noise.py
    x = colored_noise(beta, samples=4000, horizon=horizon, act_dim=2, rng=np.random.default_rng(1), variance=variance)
    assert abs(x.mean()) < 0.05 * np.sqrt(variance)
    np.testing.assert_allclose(x.var(axis=(0, 2)), variance, rtol=0.1)  # at every step of the horizon


def test_correlation_grows_with_beta():
    rng = np.random.default_rng(2)
    white, pink, brown = (lag1_autocorrelation(colored_noise(b, 500, 50, 1, rng)) for b in (0.0, 1.0, 2.0))
    assert abs(white) < 0.05
    assert 0.2 < pink < brown
    assert brown > 0.8  # Brownian: consecutive actions nearly equal


def test_seeded_and_horizon_one():
    a = colored_noise(2.0, 3, 10, 2, np.random.default_rng(5))
    b = colored_noise(2.0, 3, 10, 2, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    one = colored_noise(2.0, 100, 1, 2, np.random.default_rng(5))
    assert one.shape == (100, 1, 2) and np.all(np.isfinite(one))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"beta": -1.0}, "beta"),
        ({"samples": 0}, "samples"),
        ({"horizon": 2.5}, "horizon"),
        ({"act_dim": 0}, "act_dim"),
        ({"variance": -1.0}, "variance"),
        ({"rng": 3}, "rng"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, name):
    args = {"beta": 2.0, "samples": 4, "horizon": 10, "act_dim": 1, "rng": np.random.default_rng(0), **kwargs}
    with pytest.raises(ConfigError, match=name):
        colored_noise(**args)
