"""Training windows from the episode store: the Ray Data pipeline the learner reads, and an in-memory twin.

A window is ``window_tokens`` tokens of one episode's token sequence (paper Fig. 2) that starts at a
timestep boundary (an observation token) and holds as many timesteps as fit, ending wherever the budget
runs out, mid-timestep included; a window that runs past the end of the episode is padded with ``PAD`` at
the end only. Per episode and epoch, ``ceil(window_coverage * ceil(episode_tokens / window_tokens))``
window starts are drawn uniformly from the start steps, with a generator seeded by
``(seed, epoch, env, episode_id)``, so the windows are a function of the seed alone: Ray Data and
:func:`in_memory_windows` cut exactly the same ones.

Rows: ``tokens`` int64 [window_tokens], ``obs_dim`` int64, ``act_dim`` int64. Ray's default
``iter_torch_batches(batch_size=B)`` turns them into ``tokens`` [B, window_tokens] and ``obs_dim``,
``act_dim`` [B] long tensors, which is what ``TDM.loss(tokens, obs_dim, act_dim)`` takes: the learner
uses that default and no ``collate_fn``. :func:`collate` does the same for numpy batches (in-memory
windows, a torch DataLoader); Ray >= 2.47 still accepts it as ``collate_fn`` but warns that plain functions
there are deprecated.

A Ray Dataset re-executes its pipeline on every pass and so yields the same windows (and, with a seeded
shuffle, the same order) each time; for fresh windows every epoch set ``epochs`` and make one pass, which
then holds ``epochs`` epochs' windows, epoch after epoch (one task per file and epoch).
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import torch

from tdm_dist.data.episodes import dataset_files, list_column, read_table
from tdm_dist.errors import ConfigError, DataError
from tdm_dist.tokenizer import PAD, StepLayout, tokenize

if TYPE_CHECKING:
    import ray.data

WINDOW_COLUMNS = ["env", "episode_id", "observations", "actions", "rewards", "obs_dim", "act_dim", "steps"]
EpisodeKey = tuple[str, int]  # (env, episode_id)
_OUT = ("tokens", "obs_dim", "act_dim")  # the columns of a window row


@dataclass
class DatasetConfig:
    path: str = ""  # dataset root written by EpisodeWriter
    window_tokens: int = 1023  # tokens per training window (the model's context; paper: 1023)
    val_fraction: float = 0.05  # fraction of each env's episodes held out for validation
    seed: int = 0  # seeds the split, the window starts and the shuffle
    batch_size: int = 32  # windows per batch and training worker (the learner's iter_torch_batches)
    window_coverage: float = 1.0  # windows per episode and epoch, in units of ceil(episode_tokens / window_tokens)
    epochs: int = 1  # epochs of train windows in one pass, each epoch with its own window starts
    envs: tuple[str, ...] = ()  # read only these envs; empty: every env in the dataset
    shuffle: bool = True  # seeded full shuffle of the train windows (Dataset.random_shuffle)

    def __post_init__(self):
        self.envs = tuple(self.envs)
        if self.window_tokens < 2:
            raise ConfigError(f"window_tokens must be >= 2 (a token and its target), got {self.window_tokens}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.window_coverage <= 0:
            raise ConfigError(f"window_coverage must be > 0, got {self.window_coverage}")
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")


# ---------------------------------------------------------------------------------------------- the split


def split_episodes(
    path: str | os.PathLike, val_fraction: float, seed: int, envs: tuple[str, ...] = ()
) -> tuple[list[EpisodeKey], list[EpisodeKey]]:
    """Split episodes into (train, val) lists of sorted ``(env, episode_id)``, per env, given the seed.

    Each env holds out ``round(val_fraction * episodes)`` episodes, at least one when ``val_fraction > 0``
    and it has two or more, never all of them.
    """
    by_env: dict[str, list[int]] = {}
    for f in _files(path, envs):
        table = read_table(f, ["env", "episode_id"])
        for env, eid in zip(table.column("env").to_pylist(), table.column("episode_id").to_pylist(), strict=True):
            by_env.setdefault(env, []).append(eid)
    train: list[EpisodeKey] = []
    val: list[EpisodeKey] = []
    for env in sorted(by_env):
        ids = np.array(sorted(by_env[env]), dtype=np.int64)
        n_val = round(val_fraction * len(ids))
        if val_fraction > 0 and len(ids) >= 2:
            n_val = min(max(n_val, 1), len(ids) - 1)
        perm = np.random.default_rng([seed, _env_hash(env)]).permutation(len(ids))
        val += [(env, int(i)) for i in ids[perm[:n_val]]]
        train += [(env, int(i)) for i in ids[perm[n_val:]]]
    return sorted(train), sorted(val)


def _env_hash(env: str) -> int:
    return zlib.crc32(env.encode())  # stable across processes, unlike hash()


def _files(path: str | os.PathLike, envs: tuple[str, ...]):
    files = [f for env in envs for f in dataset_files(path, env)] if envs else dataset_files(path)
    if not files:
        which = f" for envs {list(envs)}" if envs else ""
        raise DataError(f"no episode files under {path}{which}; collect data first (`tdm data collect`)")
    return files


# ---------------------------------------------------------------------------------------------- windows


def num_windows(episode_tokens: int, window_tokens: int, coverage: float = 1.0) -> int:
    """Windows per episode and epoch: enough to cover the episode about ``coverage`` times."""
    return max(1, math.ceil(coverage * math.ceil(episode_tokens / window_tokens)))


def window_rng(seed: int, env: str, episode_id: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, _env_hash(env), episode_id])


def sample_starts(
    steps: int, layout: StepLayout, window_tokens: int, count: int, rng: np.random.Generator
) -> np.ndarray:
    """``count`` window start steps of an episode of ``steps`` steps (T+1 observations), uniform.

    The last start is the first one whose window reaches the episode's end, so every token can be seen.
    Returns int64 [count] in [0, steps].
    """
    episode_tokens = layout.sequence_length(steps + 1, last_action=False)
    last = min(steps, math.ceil(max(0, episode_tokens - window_tokens) / layout.tokens_per_step))
    return rng.integers(0, last + 1, size=count, dtype=np.int64)


def cut_windows(episode_tokens: np.ndarray, layout: StepLayout, starts: np.ndarray, window_tokens: int) -> np.ndarray:
    """Windows of ``window_tokens`` from ``episode_tokens`` [L] at start steps ``starts`` [W], PAD after the end.

    Returns int64 [W, window_tokens].
    """
    padded = np.concatenate([episode_tokens, np.full(window_tokens, PAD, dtype=np.int64)])
    idx = starts[:, None] * layout.tokens_per_step + np.arange(window_tokens)  # [W, window_tokens]
    return padded[idx]


def windows_from_table(
    table: pa.Table | pa.RecordBatch,
    keep: frozenset[EpisodeKey],
    window_tokens: int,
    seed: int,
    epochs: int | Sequence[int] = 1,
    coverage: float = 1.0,
) -> dict[str, np.ndarray]:
    """Tokenized windows of the episodes of ``table`` (``WINDOW_COLUMNS``) whose (env, id) is in ``keep``, for
    ``epochs`` (a count: epochs 0 to epochs - 1; or the epoch numbers), episode by episode.

    Returns ``tokens`` int64 [W, window_tokens], ``obs_dim`` and ``act_dim`` int64 [W].
    """
    cols = {c: table.column(c).to_pylist() for c in ("env", "episode_id", "obs_dim", "act_dim", "steps")}
    lists = {c: list_column(table, c) for c in ("observations", "actions", "rewards")}
    tokens, dims = [], []
    for i, (env, eid) in enumerate(zip(cols["env"], cols["episode_id"], strict=True)):
        if (env, eid) not in keep:
            continue
        n, m, T = cols["obs_dim"][i], cols["act_dim"][i], cols["steps"][i]
        obs, act, rew = lists["observations"][i], lists["actions"][i], lists["rewards"][i]
        if min(n, m, T) < 1 or (obs.size, act.size, rew.size) != ((T + 1) * n, T * m, T + 1):
            raise DataError(
                f"episode {eid} of {env}: stored sizes do not match steps={T}, obs_dim={n}, act_dim={m}; "
                "run `tdm data validate` on the dataset"
            )
        layout = StepLayout(n, m)
        try:
            seq = tokenize(obs.reshape(T + 1, n), rew, act.reshape(T, m))
        except DataError as e:
            raise DataError(f"episode {eid} of {env}: {e}") from None
        count = num_windows(seq.shape[0], window_tokens, coverage)
        for epoch in _epoch_numbers(epochs):
            starts = sample_starts(T, layout, window_tokens, count, window_rng(seed, env, eid, epoch))
            tokens.append(cut_windows(seq, layout, starts, window_tokens))
            dims.append(np.broadcast_to(np.array([n, m], dtype=np.int64), (count, 2)))
    if not tokens:
        return {
            "tokens": np.zeros((0, window_tokens), np.int64),
            "obs_dim": np.zeros(0, np.int64),
            "act_dim": np.zeros(0, np.int64),
        }
    dim = np.concatenate(dims)
    return {"tokens": np.concatenate(tokens), "obs_dim": dim[:, 0].copy(), "act_dim": dim[:, 1].copy()}


# ---------------------------------------------------------------------------------------------- pipelines


def collate(batch: dict[str, np.ndarray], device: str | torch.device | None = None) -> dict[str, torch.Tensor]:
    """Numpy window batch -> ``tokens`` [B, window_tokens], ``obs_dim``, ``act_dim`` [B] long tensors.

    Usable as ``iter_torch_batches(collate_fn=collate)``; Ray's default conversion gives the same tensors.
    """
    return {k: torch.as_tensor(np.asarray(batch[k]), dtype=torch.long, device=device) for k in _OUT}


def _epoch_numbers(epochs: int | Sequence[int]) -> Sequence[int]:
    return range(epochs) if isinstance(epochs, int) else epochs


def _epoch_major(path: str | os.PathLike, envs: tuple[str, ...], epochs: int, cut, **kwargs) -> ray.data.Dataset:
    """A Ray Dataset of ``cut(table, epochs=[epoch], **kwargs)`` for each file of ``path`` and each epoch, in
    epoch-major order: a pass streams epoch 0 of every file, then epoch 1, and so on.

    One task per (file, epoch) rather than per file: a file's task would hold every epoch of its episodes,
    and training would then go through the data one file (a few episodes) after another, for many steps each.
    """
    import ray.data

    tasks = [{"file": str(f), "epoch": e} for e in range(epochs) for f in _files(path, envs)]
    return ray.data.from_items(tasks).map_batches(_cut_task, batch_size=1, fn_kwargs={"cut": cut, **kwargs})


def _cut_task(task: dict[str, np.ndarray], cut, **kwargs) -> Iterator[dict[str, np.ndarray]]:
    """One (file, epoch) task of :func:`_epoch_major`, yielding nothing instead of an empty batch: Ray 2.60 turns
    an empty [0, window_tokens] column into pickled Python objects instead of a tensor column."""
    (file,), (epoch,) = task["file"], task["epoch"]
    out = cut(read_table(Path(file), WINDOW_COLUMNS), epochs=[int(epoch)], **kwargs)
    if out and len(next(iter(out.values()))):
        yield out


def make_datasets(cfg: DatasetConfig) -> tuple[ray.data.Dataset, ray.data.Dataset]:
    """(train, val) ``ray.data.Dataset`` of windows (rows: tokens, obs_dim, act_dim), split by episode.

    Train holds ``cfg.epochs`` epochs of windows, shuffled when ``cfg.shuffle``; val holds one epoch's,
    unshuffled, so validation losses are comparable across evaluations.
    """
    train_ids, val_ids = split_episodes(cfg.path, cfg.val_fraction, cfg.seed, cfg.envs)

    def windows(keep: list[EpisodeKey], epochs: int):
        return _epoch_major(
            cfg.path,
            cfg.envs,
            epochs,
            windows_from_table,
            keep=frozenset(keep),
            window_tokens=cfg.window_tokens,
            seed=cfg.seed,
            coverage=cfg.window_coverage,
        )

    train = windows(train_ids, cfg.epochs)
    if cfg.shuffle:
        train = train.random_shuffle(seed=cfg.seed)
    return train, windows(val_ids, 1)


def in_memory_windows(path: str | os.PathLike, cfg: DatasetConfig, split: str = "train") -> dict[str, torch.Tensor]:
    """The windows ``make_datasets`` yields for ``split`` ("train" or "val"), built without Ray, unshuffled, in
    the pipeline's epoch-major order.

    ``path`` is read instead of ``cfg.path``; every other setting comes from ``cfg``.

    Returns the same dict as :func:`collate`: ``tokens`` [W, window_tokens], ``obs_dim``, ``act_dim`` [W].
    """
    if split not in ("train", "val"):
        raise ConfigError(f"split must be 'train' or 'val', got {split!r}")
    train_ids, val_ids = split_episodes(path, cfg.val_fraction, cfg.seed, cfg.envs)
    keep = frozenset(train_ids if split == "train" else val_ids)
    epochs = cfg.epochs if split == "train" else 1
    tables = [read_table(f, WINDOW_COLUMNS) for f in _files(path, cfg.envs)]
    parts = [
        windows_from_table(table, keep, cfg.window_tokens, cfg.seed, [epoch], cfg.window_coverage)
        for epoch in range(epochs)
        for table in tables
    ]
    return collate({k: np.concatenate([p[k] for p in parts]) for k in _OUT})


# ---------------------------------------------------------------------------------------------- segments


def cut_segments(obs: np.ndarray, act: np.ndarray, rew: np.ndarray, length: int, offset: int = 0) -> dict:
    """The consecutive ``length``-step segments of one episode, from step ``offset`` on (the baselines' data).

    obs [T+1, n], act [T, m], rew [T+1] (r_{t+1} follows a_t) -> ``obs`` [S, L+1, n], ``act`` [S, L, m],
    ``reward`` [S, L], float32; S = (T - offset) // L, the steps left over at the end are not used.
    """
    T = act.shape[0]
    starts = np.arange(offset, T - length + 1, length)
    steps = starts[:, None] + np.arange(length + 1)  # [S, L+1]
    return {
        "obs": obs[steps].astype(np.float32),
        "act": act[steps[:, :-1]].astype(np.float32),
        "reward": rew[steps[:, 1:]].astype(np.float32),
    }


def segments_from_table(
    table: pa.Table | pa.RecordBatch,
    keep: frozenset[EpisodeKey],
    length: int,
    seed: int,
    epochs: int | Sequence[int] = 1,
) -> dict[str, np.ndarray]:
    """Segments (``cut_segments``) of the episodes of ``table`` whose (env, id) is in ``keep``, for ``epochs``
    (as in :func:`windows_from_table`), each epoch from its own seeded offset in [0, length). All episodes
    must share one layout."""
    cols = {c: table.column(c).to_pylist() for c in ("env", "episode_id", "obs_dim", "act_dim", "steps")}
    lists = {c: list_column(table, c) for c in ("observations", "actions", "rewards")}
    parts: list[dict] = []
    for i, (env, eid) in enumerate(zip(cols["env"], cols["episode_id"], strict=True)):
        if (env, eid) not in keep:
            continue
        n, m, T = cols["obs_dim"][i], cols["act_dim"][i], cols["steps"][i]
        obs, act = lists["observations"][i].reshape(T + 1, n), lists["actions"][i].reshape(T, m)
        for epoch in _epoch_numbers(epochs):
            offset = int(window_rng(seed, env, eid, epoch).integers(0, length)) if length > 1 else 0
            parts.append(cut_segments(obs, act, lists["rewards"][i], length, offset))
    if not parts:
        return {}
    return {k: np.concatenate([p[k] for p in parts]) for k in ("obs", "act", "reward")}


def make_segment_datasets(
    path: str | os.PathLike, length: int, val_fraction: float, seed: int, epochs: int = 1, envs: tuple[str, ...] = ()
) -> tuple[ray.data.Dataset, ray.data.Dataset]:
    """(train, val) ``ray.data.Dataset`` of ``length``-step segments (rows: obs [L+1, n], act [L, m],
    reward [L]), split by episode as the windows are; train holds ``epochs`` epochs, val one."""
    if length < 1:
        raise ConfigError(f"segment length must be >= 1, got {length}")
    train_ids, val_ids = split_episodes(path, val_fraction, seed, envs)

    def segments(keep: list[EpisodeKey], epochs: int):
        return _epoch_major(path, envs, epochs, segments_from_table, keep=frozenset(keep), length=length, seed=seed)

    return segments(train_ids, epochs), segments(val_ids, 1)


def in_memory_segments(
    path: str | os.PathLike, length: int, val_fraction: float, seed: int, split: str = "train", epochs: int = 1
) -> dict[str, np.ndarray]:
    """The segments ``make_segment_datasets`` yields for ``split``, built without Ray."""
    train_ids, val_ids = split_episodes(path, val_fraction, seed)
    keep = frozenset(train_ids if split == "train" else val_ids)
    tables = [read_table(f, WINDOW_COLUMNS) for f in _files(path, ())]
    parts = [segments_from_table(table, keep, length, seed, [epoch]) for epoch in range(epochs) for table in tables]
    parts = [p for p in parts if p]
    if not parts:
        raise DataError(f"{path} has no {length}-step segment in its {split} episodes")
    return {k: np.concatenate([p[k] for p in parts]) for k in ("obs", "act", "reward")}
