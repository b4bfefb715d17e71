"""Episode store (Parquet, partitioned by env) and the Ray Data pipeline of training windows."""

from tdm_dist.data.dataset import DatasetConfig, collate, in_memory_windows, make_datasets, split_episodes
from tdm_dist.data.episodes import (
    EPISODE_SCHEMA,
    EpisodeWriter,
    existing_ids,
    read_episodes,
    read_specs,
    summarize,
    validate_dataset,
)

__all__ = [
    "EPISODE_SCHEMA",
    "DatasetConfig",
    "EpisodeWriter",
    "collate",
    "existing_ids",
    "in_memory_windows",
    "make_datasets",
    "read_episodes",
    "read_specs",
    "split_episodes",
    "summarize",
    "validate_dataset",
]
