"""Tokenization (mu-law, bins), the (o, r, SEP, a) layout, and history truncation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tdm_dist.errors import ConfigError, DataError
from tdm_dist.tokenizer import (
    BIN_WIDTH,
    NUM_BINS,
    SEPARATOR,
    History,
    Kind,
    StepLayout,
    decode_actions,
    decode_values,
    detokenize,
    encode_actions,
    encode_values,
    mu_law,
    tokenize,
)

finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=64)


@given(arrays(np.float64, st.integers(1, 64), elements=finite))
def test_value_round_trip_within_half_a_bin_in_mu_law_space(x):
    tokens = encode_values(x)
    assert tokens.dtype == np.int64 and tokens.min() >= 0 and tokens.max() < NUM_BINS
    error = np.abs(mu_law(decode_values(tokens)) - mu_law(x))
    assert error.max() <= BIN_WIDTH / 2 + 1e-9


@given(arrays(np.float64, st.integers(1, 64), elements=st.floats(-1, 1, width=64)))
def test_action_round_trip_within_half_a_bin(a):
    assert np.abs(decode_actions(encode_actions(a)) - a).max() <= BIN_WIDTH / 2 + 1e-12


def test_mu_law_matches_gato_definition():
    x = np.array([-300.0, -1.0, 0.0, 0.01, 1.0, 256.0])
    expected = np.sign(x) * np.log(np.abs(x) * 100 + 1) / np.log(256 * 100 + 1)
    np.testing.assert_allclose(mu_law(x), np.clip(expected, -1, 1))
    assert encode_values(np.array([0.0]))[0] == NUM_BINS // 2  # zero sits at the bottom of the middle bin


def test_actions_are_clipped_and_binned_uniformly():
    tokens = encode_actions(np.array([-5.0, -1.0, 0.0, 1.0, 5.0]))
    assert tokens.tolist() == [0, 0, NUM_BINS // 2, NUM_BINS - 1, NUM_BINS - 1]


def test_numpy_and_torch_agree():
    x = np.random.default_rng(0).normal(scale=3, size=(4, 7))
    np.testing.assert_array_equal(encode_values(x), encode_values(torch.from_numpy(x)).numpy())
    np.testing.assert_array_equal(encode_actions(x), encode_actions(torch.from_numpy(x)).numpy())
    tokens = encode_values(x)
    np.testing.assert_allclose(decode_values(tokens), decode_values(torch.from_numpy(tokens)).numpy(), rtol=1e-5)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_inputs_are_rejected_with_their_position(bad):
    obs = np.zeros((3, 4))
    obs[2, 1] = bad
    with pytest.raises(DataError, match=r"observations must be finite.*\(2, 1\)"):
        tokenize(obs, np.zeros(3), np.zeros((3, 2)))
    with pytest.raises(DataError, match="actions"):
        tokenize(np.zeros((3, 4)), np.zeros(3), np.full((3, 2), bad))
    with pytest.raises(DataError, match="rewards"):
        encode_values(torch.tensor([0.0, bad]), "rewards")


def test_layout_positions():
    layout = StepLayout(obs_dim=3, act_dim=2)  # paper Fig. 2: n = 3, m = 2
    obs = np.arange(6, dtype=float).reshape(2, 3)
    tokens = tokenize(obs, np.array([0.0, 1.0]), np.zeros((2, 2)))
    assert tokens.shape == (14,) and layout.tokens_per_step == 7
    assert tokens[3] == encode_values(np.array([0.0]))[0]  # r_0 = 0 right after o_0
    assert tokens[4] == SEPARATOR and tokens[11] == SEPARATOR  # t_5 and t_12 of Fig. 2 (1-based)
    np.testing.assert_array_equal(tokens[7:10], encode_values(obs[1]))
    assert layout.kinds().tolist() == [Kind.OBS] * 3 + [Kind.REWARD, Kind.SEP] + [Kind.ACTION] * 2


@settings(max_examples=50, deadline=None)
@given(
    n=st.integers(1, 12),
    m=st.integers(1, 6),
    T=st.integers(1, 9),
    batch=st.integers(1, 3),
    last_action=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_tokenize_detokenize_batches(n, m, T, batch, last_action, seed):
    rng = np.random.default_rng(seed)
    obs = rng.normal(scale=5, size=(batch, T, n))
    rew = rng.uniform(0, 1, size=(batch, T))
    act = rng.uniform(-1, 1, size=(batch, T if last_action else T - 1, m))
    layout = StepLayout(n, m)
    tokens = tokenize(obs, rew, act)
    assert tokens.shape == (batch, layout.sequence_length(T, last_action))
    torch_tokens = tokenize(torch.from_numpy(obs), torch.from_numpy(rew), torch.from_numpy(act))
    np.testing.assert_array_equal(tokens, torch_tokens.numpy())
    o, r, a = detokenize(tokens, layout)
    assert o.shape == obs.shape and r.shape == rew.shape and a.shape == act.shape
    assert np.abs(mu_law(o) - mu_law(obs)).max() <= BIN_WIDTH / 2 + 1e-9
    assert np.abs(a - act).max(initial=0.0) <= BIN_WIDTH / 2 + 1e-9
    per_row = [tokenize(obs[i], rew[i], act[i]) for i in range(batch)]  # batched == one by one
    np.testing.assert_array_equal(tokens, np.stack(per_row))


def test_shape_mismatches_are_named():
    with pytest.raises(DataError, match="rewards must have shape"):
        tokenize(np.zeros((3, 2)), np.zeros(4), np.zeros((3, 1)))
    with pytest.raises(DataError, match="actions must have shape"):
        tokenize(np.zeros((3, 2)), np.zeros(3), np.zeros((1, 1)))
    with pytest.raises(DataError, match="timestep boundary"):
        detokenize(np.zeros(5, dtype=np.int64), StepLayout(2, 2))
    with pytest.raises(ConfigError):
        StepLayout(0, 1)


def _history(T: int, n: int = 3, m: int = 2) -> History:
    rng = np.random.default_rng(T)
    return History(rng.normal(size=(T, n)), rng.uniform(size=T), rng.uniform(-1, 1, size=(T - 1, m)))


@pytest.mark.parametrize("budget", [4, 5, 10, 11, 12, 30, 1000])
def test_history_truncation_keeps_whole_timesteps_and_fits(budget):
    history = _history(T=10)  # 7 tokens per step, the last one 4 tokens (o, r)
    tokens = history.tokens(budget)
    assert len(tokens) <= budget
    assert (len(tokens) - 4) % 7 == 0  # whole timesteps, then o_t, r_t
    assert len(tokens) + 7 > min(budget, 67)  # as many steps as fit
    full = history.tokens(10_000)
    np.testing.assert_array_equal(tokens, full[len(full) - len(tokens) :])  # the most recent ones
    assert tokens[0] == full[len(full) - len(tokens)] and (len(full) - len(tokens)) % 7 == 0


def test_history_too_long_for_the_window_is_an_error():
    with pytest.raises(ConfigError, match="no room for the current observation"):
        _history(T=3).tokens(3)


def test_history_shapes_are_checked():
    with pytest.raises(DataError, match="one fewer than observations"):
        History(np.zeros((3, 2)), np.zeros(3), np.zeros((3, 1)))
    with pytest.raises(DataError, match="rewards must be"):
        History(np.zeros((3, 2)), np.zeros(2), np.zeros((2, 1)))
