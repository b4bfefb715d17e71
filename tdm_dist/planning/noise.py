"""Temporally correlated action noise for sampling-based planners (paper §4.1, App. B)."""

from __future__ import annotations

import colorednoise
import numpy as np

from tdm_dist.errors import ConfigError


def colored_noise(
    beta: float, samples: int, horizon: int, act_dim: int, rng: np.random.Generator, variance: float = 2.0
) -> np.ndarray:
    """Gaussian noise with power spectrum ∝ f^-beta along the horizon: [K, N, m], mean 0, not clipped.

    beta = 2 is Brownian noise (the paper's default: drift 0, variance 2), 1 pink, 0 white. Each action entry of
    each sample is an independent sequence of ``variance`` (the expected variance at every step); callers clip.
    """
    if not (np.isfinite(beta) and beta >= 0):
        raise ConfigError(f"beta must be a finite exponent >= 0 (2 Brownian, 1 pink, 0 white), got {beta}")
    for name, value in (("samples", samples), ("horizon", horizon), ("act_dim", act_dim)):
        if int(value) != value or value < 1:
            raise ConfigError(f"{name} must be an integer >= 1, got {value}")
    if not (np.isfinite(variance) and variance >= 0):
        raise ConfigError(f"variance must be finite and >= 0, got {variance}")
    if not isinstance(rng, np.random.Generator):
        raise ConfigError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    size = (int(samples), int(act_dim), int(horizon))
    if horizon == 1:  # a single step has no spectrum; colorednoise would divide by zero
        noise = rng.standard_normal(size)
    else:
        noise = colorednoise.powerlaw_psd_gaussian(beta, size=size, random_state=rng) / np.sqrt(
            _powerlaw_variance(beta, int(horizon))
        )
    return np.sqrt(variance) * noise.transpose(0, 2, 1)


def _powerlaw_variance(beta: float, horizon: int) -> float:
    """The actual variance at every step of ``powerlaw_psd_gaussian(beta, (..., horizon))``'s output.

    colorednoise 2.2 means to normalise to unit variance but leaves the zero-frequency term out of its estimate
    (and counts the Nyquist term of an even length at half its power), so its output has variance above 1:
    1.3 for Brownian noise over 25 steps, 4 for any beta over 2 steps. This is the exact ratio, from the same
    spectrum: amplitude f^(-beta/2), flat below the lowest frequency 1/horizon.
    """
    f = np.fft.rfftfreq(horizon)
    f[0] = f[1]
    power = f ** (-float(beta))  # squared amplitude of each Fourier component
    if horizon % 2:  # components 1.. are complex: each adds 4 * power / n^2 to the variance; the real DC 2 * power
        used, actual = 4 * power[1:].sum(), 2 * power[0] + 4 * power[1:].sum()
    else:  # the Nyquist component is real too
        used = 4 * power[1:-1].sum() + power[-1]
        actual = 2 * power[0] + 4 * power[1:-1].sum() + 2 * power[-1]
    return float(actual / used)
