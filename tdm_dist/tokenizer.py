"""Gato tokenization of trajectories and the per-timestep sequence layout (paper §3.1, Fig. 2).

Observations and rewards are mu-law companded, ``F(x) = sgn(x) log(|x| mu + 1) / log(M mu + 1)`` with
mu = 100 and M = 256, clipped to [-1, 1] and cut into 1024 uniform bins. Actions are already in [-1, 1]:
they are clipped and binned uniformly, without mu-law. Token ids 0...1023 are bins, ``SEPARATOR`` marks
the start of an action, ``PAD`` fills batches and is never predicted.

One timestep is laid out as ``o_t (n tokens), r_t (1 token), SEP, a_t (m tokens)``, where r_t is the
reward that came with o_t (0 at the first step). A history that ends in the middle of a timestep ends
after ``o_t, r_t``: the next tokens a planner feeds are ``SEP, a_t``.

Every function works on numpy arrays and on torch tensors alike (the result has the input's type and
device) and is vectorized over any leading batch dimensions.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import torch

from tdm_dist.arrays import array_module
from tdm_dist.errors import ConfigError, DataError

NUM_BINS = 1024
SEPARATOR = NUM_BINS  # token id of the separator before each action
PAD = NUM_BINS + 1  # token id of padding; masked out of the loss
VOCAB_SIZE = NUM_BINS + 2
MU = 100.0
M = 256.0
_LOG_MU_M = float(np.log1p(M * MU))  # log(M mu + 1)
BIN_WIDTH = 2.0 / NUM_BINS  # in mu-law space for observations and rewards, in action units for actions


class Kind(IntEnum):
    """What a token of a timestep encodes."""

    OBS = 0
    REWARD = 1
    SEP = 2
    ACTION = 3


def check_finite(x, name: str) -> None:
    """Raise ``DataError`` naming ``name`` and the first bad index if ``x`` has NaN or inf entries."""
    xp = array_module(x)
    finite = xp.isfinite(x)
    if not bool(finite.all()):
        bad = np.argwhere(~np.asarray(finite.cpu() if xp is torch else finite))[0]
        value = x[tuple(bad)]
        raise DataError(f"{name} must be finite, found {float(value)} at index {tuple(int(i) for i in bad)}")


def mu_law(x):
    """Mu-law companding ``F(x)``, clipped to [-1, 1]."""
    xp = array_module(x)
    return (xp.sign(x) * xp.log1p(abs(x) * MU) / _LOG_MU_M).clip(-1.0, 1.0)


def inverse_mu_law(y):
    """Inverse of :func:`mu_law` on [-1, 1]."""
    xp = array_module(y)
    return xp.sign(y) * xp.expm1(abs(y) * _LOG_MU_M) / MU


def _to_bins(y):
    """Uniform bins over [-1, 1] -> token ids 0...NUM_BINS-1."""
    xp = array_module(y)
    idx = xp.floor((y + 1.0) * (NUM_BINS / 2.0)).clip(0, NUM_BINS - 1)
    return idx.long() if xp is torch else idx.astype(np.int64)


def _bin_centres(tokens, like=None):
    if array_module(tokens) is torch:
        dtype = like.dtype if isinstance(like, torch.Tensor) else torch.float32
        return -1.0 + (tokens.to(dtype) + 0.5) * BIN_WIDTH
    return -1.0 + (np.asarray(tokens, dtype=np.float64) + 0.5) * BIN_WIDTH


def encode_values(x, name: str = "values"):
    """Observations or rewards -> tokens (mu-law, then 1024 uniform bins). Rejects NaN/inf."""
    check_finite(x, name)
    return _to_bins(mu_law(x))


def decode_values(tokens, like=None):
    """Tokens -> observations or rewards at the bin centres (inverse mu-law)."""
    return inverse_mu_law(_bin_centres(tokens, like))


def encode_actions(a, name: str = "actions"):
    """Actions in [-1, 1] -> tokens (clipped, 1024 uniform bins, no mu-law). Rejects NaN/inf."""
    check_finite(a, name)
    return _to_bins(a.clip(-1.0, 1.0))


def decode_actions(tokens, like=None):
    """Tokens -> actions at the bin centres."""
    return _bin_centres(tokens, like)


@dataclass(frozen=True)
class StepLayout:
    """Where each token of one timestep sits: ``o (n), r (1), SEP, a (m)``."""

    obs_dim: int  # n, observation entries (one token each)
    act_dim: int  # m, action entries (one token each)

    def __post_init__(self):
        if self.obs_dim < 1 or self.act_dim < 1:
            raise ConfigError(
                f"a timestep needs obs_dim >= 1 and act_dim >= 1, got obs_dim={self.obs_dim}, act_dim={self.act_dim}"
            )

    @property
    def tokens_per_step(self) -> int:
        return self.obs_dim + self.act_dim + 2

    def longest_horizon(self, context: int) -> int:
        """The most imagined timesteps that fit in ``context`` tokens after the current ``o_t, r_t``."""
        return (context - self.obs_dim - 1) // self.tokens_per_step

    def check_horizon(self, horizon: int, context: int, of: str = "the model") -> None:
        """``ConfigError`` when ``horizon`` imagined steps do not fit in ``context`` tokens (the context ``of``)."""
        longest = self.longest_horizon(context)
        if horizon > longest:
            raise ConfigError(
                f"horizon {horizon} does not fit the context of {of} ({context} tokens, {self.tokens_per_step} per "
                f"step after the current observation); the longest horizon is {longest}"
            )

    @property
    def reward_index(self) -> int:
        return self.obs_dim

    @property
    def sep_index(self) -> int:
        return self.obs_dim + 1

    @property
    def action_slice(self) -> slice:
        return slice(self.obs_dim + 2, self.obs_dim + 2 + self.act_dim)

    def kinds(self) -> np.ndarray:
        """Kind of each token of a timestep, ``[tokens_per_step]``."""
        k = np.full(self.tokens_per_step, Kind.OBS, dtype=np.int64)
        k[self.reward_index] = Kind.REWARD
        k[self.sep_index] = Kind.SEP
        k[self.action_slice] = Kind.ACTION
        return k

    def sequence_length(self, steps: int, last_action: bool = True) -> int:
        """Tokens in ``steps`` timesteps; without the last action the last step ends after ``o, r``."""
        return steps * self.tokens_per_step - (0 if last_action else self.act_dim + 1)


def tokenize(observations, rewards, actions):
    """Tokenize whole episodes or batches of them.

    observations: [..., T, n]; rewards: [..., T] (r_t came with o_t); actions: [..., T, m] or
    [..., T-1, m] (then the last timestep is ``o, r`` only). Returns tokens [..., L] with
    ``L = StepLayout(n, m).sequence_length(T, last_action)``.
    """
    xp = array_module(observations)
    T, n = observations.shape[-2:]
    m = actions.shape[-1]
    if rewards.shape != observations.shape[:-1]:
        raise DataError(f"rewards must have shape {tuple(observations.shape[:-1])}, got {tuple(rewards.shape)}")
    if actions.shape[:-2] != observations.shape[:-2] or actions.shape[-2] not in (T, T - 1):
        raise DataError(
            f"actions must have shape [..., {T} or {T - 1}, m] matching observations {tuple(observations.shape)}, "
            f"got {tuple(actions.shape)}"
        )
    layout = StepLayout(n, m)
    last_action = actions.shape[-2] == T
    lead = tuple(observations.shape[:-2])
    if xp is torch:
        steps = torch.empty((*lead, T, layout.tokens_per_step), dtype=torch.long, device=observations.device)
    else:
        steps = np.empty((*lead, T, layout.tokens_per_step), dtype=np.int64)
    steps[..., :n] = encode_values(observations, "observations")
    steps[..., n] = encode_values(rewards, "rewards")
    steps[..., n + 1] = SEPARATOR
    if last_action:
        steps[..., layout.action_slice] = encode_actions(actions)
    else:
        steps[..., :-1, layout.action_slice] = encode_actions(actions)
    flat = steps.reshape((*lead, T * layout.tokens_per_step))
    return flat[..., : layout.sequence_length(T, last_action)]


def detokenize(tokens, layout: StepLayout):
    """Inverse of :func:`tokenize`: tokens [..., L] -> (observations, rewards, actions) at bin centres.

    ``L`` must hold whole timesteps, optionally with the last one ending after ``o, r``.
    """
    xp = array_module(tokens)
    L = tokens.shape[-1]
    S = layout.tokens_per_step
    partial = S - layout.act_dim - 1
    if L % S not in (0, partial):
        raise DataError(f"a token sequence of length {L} does not end at a timestep boundary of {layout}")
    T = -(-L // S)
    lead = tuple(tokens.shape[:-1])
    if L % S:  # pad the missing SEP and action tokens to reshape into whole steps
        fill = xp.full((*lead, S - partial), SEPARATOR, **({"device": tokens.device} if xp is torch else {}))
        tokens = xp.concatenate([tokens, fill], -1) if xp is np else torch.cat([tokens, fill], -1)
    steps = tokens.reshape((*lead, T, S))
    obs = decode_values(steps[..., : layout.obs_dim])
    rew = decode_values(steps[..., layout.reward_index])
    act = decode_actions(steps[..., layout.action_slice])
    if L % S:
        act = act[..., :-1, :]
    return obs, rew, act


@dataclass
class History:
    """The real interaction so far, ending with the current observation and its reward.

    observations: [T, n]; rewards: [T] (r_t came with o_t, 0 at the first step); actions: [T-1, m].
    """

    observations: np.ndarray | torch.Tensor
    rewards: np.ndarray | torch.Tensor
    actions: np.ndarray | torch.Tensor

    def __post_init__(self):
        if self.observations.ndim != 2 or self.observations.shape[0] < 1:
            raise DataError(f"history observations must be [T >= 1, n], got {tuple(self.observations.shape)}")
        T, _ = self.observations.shape
        if tuple(self.rewards.shape) != (T,):
            raise DataError(f"history rewards must be [{T}], got {tuple(self.rewards.shape)}")
        if self.actions.ndim != 2 or self.actions.shape[0] != T - 1:
            raise DataError(
                f"history actions must be [{T - 1}, m] (one fewer than observations), got {tuple(self.actions.shape)}"
            )

    @property
    def layout(self) -> StepLayout:
        return StepLayout(self.observations.shape[1], self.actions.shape[1])

    def tokens(self, max_tokens: int):
        """The most recent whole timesteps that fit in ``max_tokens``, tokenized; ends after ``o_t, r_t``."""
        layout = self.layout
        partial = layout.sequence_length(1, last_action=False)
        if max_tokens < partial:
            raise ConfigError(
                f"no room for the current observation: it needs {partial} tokens, {max_tokens} are left "
                "(shorten the horizon or use a model with a longer context)"
            )
        keep = 1 + (max_tokens - partial) // layout.tokens_per_step
        T = self.observations.shape[0]
        start = max(0, T - keep)
        return tokenize(self.observations[start:], self.rewards[start:], self.actions[start:])
