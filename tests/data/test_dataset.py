"""Training windows: the split, window alignment and padding, determinism, and the Ray Data pipeline."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from tdm_dist.data import DatasetConfig, in_memory_windows, make_datasets, read_episodes, split_episodes
from tdm_dist.data.dataset import cut_windows, sample_starts
from tdm_dist.errors import ConfigError, DataError
from tdm_dist.model import TDM, preset
from tdm_dist.tokenizer import BIN_WIDTH, NUM_BINS, PAD, SEPARATOR, StepLayout, detokenize, mu_law, tokenize


def test_split_is_deterministic_disjoint_and_per_env(dataset):
    train, val = split_episodes(dataset, 0.3, seed=1)
    assert (train, val) == split_episodes(dataset, 0.3, seed=1)
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted((e["env"], e["episode_id"]) for e in read_episodes(dataset))
    for env in ("cartpole-swingup", "walker-stand"):
        assert sum(e == env for e, _ in val) == 2  # round(0.3 * 7)
    assert any(split_episodes(dataset, 0.3, seed=s)[1] != val for s in range(2, 6))
    _, val = split_episodes(dataset, 0.01, seed=0)
    assert len(val) == 2  # at least one per env
    train, val = split_episodes(dataset, 0.0, seed=0, envs=("walker-stand",))
    assert val == [] and {e for e, _ in train} == {"walker-stand"}
    with pytest.raises(DataError, match=r"no episode files .* for envs"):
        split_episodes(dataset, 0.1, seed=0, envs=("humanoid-stand",))


def test_windows_start_at_a_timestep_and_match_the_episode(make_episode):
    ep = make_episode("walker-stand", 0, steps=30)
    layout = StepLayout(24, 6)
    S, W = layout.tokens_per_step, 100  # 32 tokens per step: a window holds 3 steps and 4 obs tokens
    seq = tokenize(ep["observations"], ep["rewards"], ep["actions"])
    starts = sample_starts(30, layout, W, 50, np.random.default_rng(0))
    last = math.ceil((len(seq) - W) / S)
    assert starts.min() >= 0 and starts.max() == last  # every token of the episode can be seen
    windows = cut_windows(seq, layout, starts, W)
    for k, window in zip(starts, windows, strict=True):
        end = min(len(seq), k * S + W)
        assert np.array_equal(window[: end - k * S], seq[k * S : end])
        assert (window[end - k * S :] == PAD).all()
        whole = 3 if k * S + 3 * S <= len(seq) else (len(seq) - k * S) // S
        obs, rew, act = detokenize(torch.as_tensor(window[: whole * S]), layout)
        # decoded bin centres lie within one bin of the true values (mu-law space for observations)
        assert np.abs(mu_law(obs.numpy()) - mu_law(ep["observations"][k : k + whole])).max() <= BIN_WIDTH
        assert np.abs(act.numpy() - ep["actions"][k : k + whole]).max() <= BIN_WIDTH
        assert np.abs(mu_law(rew.numpy()) - mu_law(ep["rewards"][k : k + whole])).max() <= BIN_WIDTH


def check_windows(tokens: torch.Tensor, obs_dim: torch.Tensor, act_dim: torch.Tensor) -> None:
    """Every window starts with an observation, holds SEP where its layout says, and PAD only at the end."""
    for row, n, m in zip(tokens, obs_dim.tolist(), act_dim.tolist(), strict=True):
        S = n + m + 2
        is_pad = row == PAD
        first_pad = int(is_pad.int().argmax()) if is_pad.any() else len(row)
        assert is_pad[first_pad:].all() and not is_pad[:first_pad].any()
        pos = torch.arange(first_pad) % S
        assert ((row[:first_pad] == SEPARATOR) == (pos == n + 1)).all()
        assert (row[:first_pad][pos != n + 1] < NUM_BINS).all()


def test_in_memory_windows_are_deterministic_and_padded_at_the_end(dataset):
    cfg = DatasetConfig(path=str(dataset), window_tokens=400, val_fraction=0.3, seed=3)
    train = in_memory_windows(dataset, cfg)
    assert train["tokens"].shape[1] == 400 and train["tokens"].dtype == torch.long
    assert set(zip(train["obs_dim"].tolist(), train["act_dim"].tolist(), strict=True)) == {(5, 1), (24, 6)}
    check_windows(**train)
    again = in_memory_windows(dataset, cfg)
    assert all(torch.equal(train[k], again[k]) for k in train)
    other = in_memory_windows(dataset, DatasetConfig(path=str(dataset), window_tokens=400, val_fraction=0.3, seed=4))
    assert not torch.equal(train["tokens"][:5], other["tokens"][:5])
    assert (train["tokens"] == PAD).any()  # the 3-step episodes are shorter than a window

    val = in_memory_windows(dataset, cfg, split="val")
    check_windows(**val)
    _, val_ids = split_episodes(dataset, 0.3, seed=3)
    count = {"train": 0, "val": 0}
    for e in read_episodes(dataset):
        tokens = StepLayout(e["obs_dim"], e["act_dim"]).sequence_length(e["steps"] + 1, last_action=False)
        split = "val" if (e["env"], e["episode_id"]) in val_ids else "train"
        count[split] += math.ceil(tokens / 400)
    assert (len(train["tokens"]), len(val["tokens"])) == (count["train"], count["val"])

    two = in_memory_windows(dataset, replace(cfg, epochs=2))
    assert len(two["tokens"]) == 2 * count["train"]
    assert len(torch.unique(two["tokens"], dim=0)) > count["train"]  # the second epoch draws new starts


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="window_tokens"):
        DatasetConfig(path="x", window_tokens=1)
    with pytest.raises(ConfigError, match="val_fraction"):
        DatasetConfig(path="x", val_fraction=1.0)
    with pytest.raises(ConfigError, match="no dataset path"):
        in_memory_windows("", DatasetConfig())


def sorted_rows(batch: dict[str, torch.Tensor]) -> list[tuple[int, ...]]:
    return sorted(
        (int(n), int(m), *row.tolist())
        for row, n, m in zip(batch["tokens"], batch["obs_dim"], batch["act_dim"], strict=True)
    )


def test_ray_datasets_match_in_memory_windows_and_feed_the_model(ray_session, dataset):
    cfg = DatasetConfig(path=str(dataset), window_tokens=128, val_fraction=0.3, seed=5, batch_size=16)
    train, val = make_datasets(cfg)
    batches = list(train.iter_torch_batches(batch_size=cfg.batch_size))
    assert all(b["tokens"].shape[1] == 128 and b["tokens"].dtype == torch.long for b in batches)
    assert all(b["obs_dim"].dtype == torch.long and b["obs_dim"].shape == b["tokens"].shape[:1] for b in batches)
    ray_train = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
    assert sorted_rows(ray_train) == sorted_rows(in_memory_windows(dataset, cfg))
    ray_val = {k: torch.from_numpy(v) for k, v in val.take_batch(10_000).items()}
    assert sorted_rows(ray_val) == sorted_rows(in_memory_windows(dataset, cfg, split="val"))

    torch.manual_seed(0)
    model = TDM(preset("tiny", n_layer=1, d_model=32, n_head=2, d_ff=64, context=128))
    loss = model.loss(**batches[0])
    assert torch.isfinite(loss) and loss.item() > 0

    only_walker, _ = make_datasets(
        DatasetConfig(path=str(dataset), window_tokens=128, val_fraction=0.0, envs=("walker-stand",), shuffle=False)
    )
    assert set(only_walker.take_batch(10_000)["obs_dim"].tolist()) == {24}


def test_a_pass_streams_the_epochs_one_after_another(ray_session, dataset):
    """Epoch 0 of every episode comes before epoch 1 of any: with a local shuffle buffer, training then mixes
    windows of the whole dataset in every stretch of steps, not those of one file's episodes at a time."""
    import ray.data

    cfg = DatasetConfig(path=str(dataset), window_tokens=128, val_fraction=0.3, seed=5, epochs=3, shuffle=False)
    options = ray.data.DataContext.get_current().execution_options
    options.preserve_order = True  # the order of the tasks, which is what is tested; training does not wait for it
    try:
        train, _ = make_datasets(cfg)  # a Dataset keeps the DataContext of its creation
        stream = {k: torch.from_numpy(v) for k, v in train.take_batch(100_000).items()}
    finally:
        options.preserve_order = False
    memory = in_memory_windows(dataset, cfg)
    assert all(torch.equal(stream[k], memory[k]) for k in memory)  # the same windows, in the same order
    first = in_memory_windows(dataset, replace(cfg, epochs=1))
    assert len(memory["tokens"]) == 3 * len(first["tokens"])
    assert torch.equal(memory["tokens"][: len(first["tokens"])], first["tokens"])  # the first third: epoch 0, whole
