"""The Parquet episode store: one row per episode, partitioned by environment.

Layout on disk (hive style, so ``pyarrow.dataset`` and Ray Data see an ``env`` partition)::

    root/env=cartpole-swingup/part-<uuid>.parquet
    root/env=walker-stand/part-<uuid>.parquet

Each file holds whole episodes of one environment and is written under a temporary name
(``.part-<uuid>.parquet.tmp``) and renamed when complete, so a crash never leaves a half episode; readers
skip names starting with ``.`` or ``_`` and anything not ending in ``.parquet`` (Ray Data's ``read_parquet``
filters by extension only, hence the ``.tmp`` suffix). Several writers (one per
collection actor) may write into the same root at once: every file has its own uuid.

Schema (``EPISODE_SCHEMA``), one row per episode of T steps, n = obs_dim, m = act_dim:

=================  ==============  ===========================================================
column             type            meaning
=================  ==============  ===========================================================
env                string          registry name, e.g. ``cartpole-swingup`` (also the partition)
episode_id         int64           unique within a dataset per env
seed               int64           seed of the environment instance that produced the episode
observations       list<float32>   o_0 ... o_T, row-major: (T+1) * n values
actions            list<float32>   a_0 ... a_{T-1}, row-major: T * m values in [-1, 1]
rewards            list<float32>   r_0 ... r_T; r_t came with o_t, so r_0 = 0
obs_dim            int32           n
act_dim            int32           m
steps              int32           T
return             float64         sum of rewards
expert             string          what chose the actions: ``gt-mpc``, ``random``, ``rllib:PATH``
expert_settings    string          JSON object of the expert's settings
spec               string          JSON of ``EnvSpec.to_dict()``
=================  ==============  ===========================================================

In memory an episode is a dict with the same keys, where ``observations`` is [T+1, n], ``actions`` [T, m],
``rewards`` [T+1] (float32 numpy arrays), ``spec`` an ``EnvSpec`` and ``expert_settings`` a dict. The
writer fills in ``obs_dim``, ``act_dim``, ``steps`` and ``return``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tdm_dist.envs.spec import EnvSpec
from tdm_dist.errors import ConfigError, DataError

log = logging.getLogger(__name__)

EPISODE_SCHEMA = pa.schema(
    [
        ("env", pa.string()),
        ("episode_id", pa.int64()),
        ("seed", pa.int64()),
        ("observations", pa.list_(pa.float32())),
        ("actions", pa.list_(pa.float32())),
        ("rewards", pa.list_(pa.float32())),
        ("obs_dim", pa.int32()),
        ("act_dim", pa.int32()),
        ("steps", pa.int32()),
        ("return", pa.float64()),
        ("expert", pa.string()),
        ("expert_settings", pa.string()),
        ("spec", pa.string()),
    ]
)
SCALAR_COLUMNS = ["env", "episode_id", "steps", "return", "obs_dim", "act_dim", "expert"]
_ENV_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]*$")  # must be safe as a directory name


def partition_dir(root: str | os.PathLike, env: str) -> Path:
    """The directory holding ``env``'s files under ``root``."""
    return Path(root) / f"env={env}"


def dataset_files(path: str | os.PathLike, env: str | None = None) -> list[Path]:
    """Complete Parquet files of a dataset (a root directory or one file), sorted; temporary files skipped."""
    if not os.fspath(path):
        raise ConfigError("no dataset path given: expected the root directory of an episode dataset")
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"no episode dataset at {path}: expected a directory of Parquet files or one .parquet file")
    base = partition_dir(path, env) if env is not None else path
    if not base.is_dir():
        return []
    return sorted(
        p
        for p in base.rglob("*.parquet")
        if p.is_file() and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts)
    )


# ---------------------------------------------------------------------------------------------- validation


def _episode_arrays(ep: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (
        np.asarray(ep["observations"], dtype=np.float32),
        np.asarray(ep["actions"], dtype=np.float32),
        np.asarray(ep["rewards"], dtype=np.float32),
    )


def check_episode(env: str, episode_id: int, obs, act, rew, spec: EnvSpec, where: str = "") -> None:
    """Raise ``DataError`` naming ``where``, env and episode unless the arrays form a valid episode of ``spec``.

    obs: [T+1, n], act: [T, m], rew: [T+1] with T >= 1, all finite, n and m equal to the spec's.
    """
    what = f"{where}episode {episode_id} of {env}"
    if spec.name != env:
        raise DataError(f"{what}: its spec is for {spec.name!r}, not {env!r}")
    if obs.ndim != 2 or obs.shape[0] < 2:
        raise DataError(f"{what}: observations must be [T+1, n] with T >= 1, got shape {tuple(obs.shape)}")
    T, n = obs.shape[0] - 1, obs.shape[1]
    if n != spec.obs_dim:
        raise DataError(f"{what}: observations have {n} entries, the spec of {env} says obs_dim={spec.obs_dim}")
    if act.ndim != 2 or act.shape != (T, spec.act_dim):
        raise DataError(f"{what}: actions must be [{T}, {spec.act_dim}] (T steps, act_dim), got {tuple(act.shape)}")
    if rew.shape != (T + 1,):
        raise DataError(f"{what}: rewards must be [{T + 1}] (one per observation), got {tuple(rew.shape)}")
    for name, x in (("observations", obs), ("actions", act), ("rewards", rew)):
        if not np.isfinite(x).all():
            bad = tuple(int(i) for i in np.argwhere(~np.isfinite(x))[0])
            raise DataError(f"{what}: {name} must be finite (float32), found {x[bad]} at index {bad}")
    if rew[0] != 0:
        raise DataError(f"{what}: rewards[0] must be 0 (no reward comes with the first observation), got {rew[0]}")


def _episode_row(ep: dict) -> dict:
    """Validate one in-memory episode and turn it into a row of ``EPISODE_SCHEMA``."""
    try:
        env, episode_id = ep["env"], int(ep["episode_id"])
        spec = ep["spec"]
        obs, act, rew = _episode_arrays(ep)
    except KeyError as e:
        raise DataError(f"an episode needs the key {e.args[0]!r}; got keys {sorted(ep)}") from None
    except (TypeError, ValueError) as e:
        raise DataError(f"episode {ep.get('episode_id')} of {ep.get('env')}: {e}") from None
    if not isinstance(env, str) or not _ENV_NAME.match(env):
        raise DataError(f"episode {episode_id}: env must be a registry name usable as a directory, got {env!r}")
    if episode_id < 0:
        raise DataError(f"episode {episode_id} of {env}: episode ids must be >= 0")
    if isinstance(spec, dict):
        try:
            spec = EnvSpec.from_dict(spec)
        except ConfigError as e:
            raise DataError(f"episode {episode_id} of {env}: {e}") from None
    if not isinstance(spec, EnvSpec):
        raise DataError(f"episode {episode_id} of {env}: spec must be an EnvSpec or its dict, got {type(spec)}")
    check_episode(env, episode_id, obs, act, rew, spec)
    T = act.shape[0]
    ret = float(rew.astype(np.float64).sum())
    for key, value in (("obs_dim", spec.obs_dim), ("act_dim", spec.act_dim), ("steps", T)):
        if key in ep and int(ep[key]) != value:
            raise DataError(f"episode {episode_id} of {env}: {key}={ep[key]} disagrees with the arrays ({value})")
    settings = ep.get("expert_settings", {})
    if isinstance(settings, str):
        try:
            settings = json.loads(settings)
        except json.JSONDecodeError as e:
            raise DataError(f"episode {episode_id} of {env}: expert_settings is not JSON ({e})") from None
    try:
        settings_json = json.dumps(settings, sort_keys=True)
    except TypeError as e:
        raise DataError(f"episode {episode_id} of {env}: expert_settings must be JSON-serializable ({e})") from None
    return {
        "env": env,
        "episode_id": episode_id,
        "seed": int(ep.get("seed", 0)),
        "observations": obs.reshape(-1),
        "actions": act.reshape(-1),
        "rewards": rew,
        "obs_dim": spec.obs_dim,
        "act_dim": spec.act_dim,
        "steps": T,
        "return": ret,
        "expert": str(ep.get("expert", "")),
        "expert_settings": settings_json,
        "spec": json.dumps(spec.to_dict(), sort_keys=True),
    }


def _rows_to_table(rows: list[dict]) -> pa.Table:
    arrays = []
    for field in EPISODE_SCHEMA:
        values = [r[field.name] for r in rows]
        if pa.types.is_list(field.type):
            offsets = np.concatenate([[0], np.cumsum([len(v) for v in values])]).astype(np.int32)
            flat = np.concatenate(values).astype(np.float32) if values else np.zeros(0, np.float32)
            arrays.append(pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, pa.float32())))
        else:
            arrays.append(pa.array(values, field.type))
    return pa.Table.from_arrays(arrays, schema=EPISODE_SCHEMA)


# ------------------------------------------------------------------------------------------------- writing


def existing_ids(root: str | os.PathLike, env: str) -> set[int]:
    """Episode ids of ``env`` already stored under ``root`` (empty when there are none), for resuming."""
    ids: set[int] = set()
    if not Path(root).exists():
        return ids
    for f in dataset_files(root, env):
        ids.update(read_table(f, ["episode_id"]).column("episode_id").to_pylist())
    return ids


class EpisodeWriter:
    """Validates episodes and writes them to ``root``, one Parquet file per env and flush.

    Episodes are buffered and written every ``rows_per_file`` episodes, on ``flush()`` and on leaving a
    ``with`` block. An episode id already stored (or added before) for its env raises ``DataError``; use
    :func:`existing_ids` to skip finished episodes when resuming a collection. Writers running at once
    must be given disjoint episode ids (the check does not see the other writers' unflushed buffers).
    """

    def __init__(self, root: str | os.PathLike, rows_per_file: int = 64):
        if rows_per_file < 1:
            raise ConfigError(f"rows_per_file must be >= 1, got {rows_per_file}")
        self.root = Path(root)
        self.rows_per_file = rows_per_file
        self._buffer: dict[str, list[dict]] = {}
        self._ids: dict[str, set[int]] = {}  # stored or buffered ids per env, loaded on first use
        self.written: list[Path] = []  # every file this writer completed

    def add(self, episode: dict) -> None:
        """Validate ``episode`` (see the module docstring for its keys) and buffer it."""
        row = _episode_row(episode)
        env, eid = row["env"], row["episode_id"]
        if env not in self._ids:
            self._ids[env] = existing_ids(self.root, env)
        if eid in self._ids[env]:
            raise DataError(f"episode {eid} of {env} is already in {self.root}; episode ids must be unique per env")
        self._ids[env].add(eid)
        self._buffer.setdefault(env, []).append(row)
        if len(self._buffer[env]) >= self.rows_per_file:
            self._write(env)

    def write(self, episodes: Iterable[dict]) -> list[Path]:
        """Add every episode, then flush; returns the files written."""
        before = len(self.written)
        for ep in episodes:
            self.add(ep)
        self.flush()
        return self.written[before:]

    def flush(self) -> None:
        """Write every buffered episode."""
        for env in list(self._buffer):
            self._write(env)

    def _write(self, env: str) -> None:
        rows = self._buffer.pop(env, [])
        if not rows:
            return
        directory = partition_dir(self.root, env)
        directory.mkdir(parents=True, exist_ok=True)
        name = f"part-{uuid.uuid4().hex}.parquet"
        tmp, final = directory / f".{name}.tmp", directory / name
        try:
            with open(tmp, "wb") as f:
                pq.write_table(_rows_to_table(rows), f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)  # atomic: readers see the whole file or none of it
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(directory)
        self.written.append(final)
        log.debug("wrote %d episodes of %s to %s", len(rows), env, final)

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()  # buffered episodes are complete and validated, so they are kept even on an error


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not supported everywhere (e.g. Windows); the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------------- reading


def read_table(path: Path, columns: list[str] | None = None) -> pa.Table:
    """One file, or ``DataError`` naming it when it is not a readable episode file."""
    try:
        table = pq.read_table(path, columns=columns, partitioning=None)
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{path}: not a readable Parquet file ({e}); delete it or re-collect its episodes") from None
    missing = [c for c in columns or EPISODE_SCHEMA.names if c not in table.column_names]
    if missing:
        raise DataError(f"{path}: missing columns {missing}; expected the episode schema {EPISODE_SCHEMA.names}")
    return table


def list_column(table: pa.Table | pa.RecordBatch, name: str) -> list[np.ndarray]:
    """A ``list<float32>`` column as one float32 numpy array per row (zero-copy views where possible)."""
    col = table.column(name)
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    offsets = arr.offsets.to_numpy()
    values = arr.values.to_numpy(zero_copy_only=False)
    return [values[offsets[i] : offsets[i + 1]] for i in range(len(arr))]


def _iter_file_episodes(path: Path) -> Iterator[dict]:
    table = read_table(path)
    nulls = [c for c in table.column_names if table.column(c).null_count]
    if nulls:
        raise DataError(f"{path}: columns {nulls} have null entries; every episode needs every column")
    lists = {c: list_column(table, c) for c in ("observations", "actions", "rewards")}
    scalars = table.drop_columns(list(lists)).to_pylist()
    for i, row in enumerate(scalars):
        n, m, T = row["obs_dim"], row["act_dim"], row["steps"]
        what = f"{path}: episode {row['episode_id']} of {row['env']}"
        try:
            spec = EnvSpec.from_dict(json.loads(row["spec"]))
            settings = json.loads(row["expert_settings"])
        except (TypeError, json.JSONDecodeError, ConfigError) as e:
            raise DataError(f"{what}: spec or expert_settings is not valid JSON ({e})") from None
        obs, act, rew = lists["observations"][i], lists["actions"][i], lists["rewards"][i]
        if min(n, m, T) < 1 or (obs.size, act.size, rew.size) != ((T + 1) * n, T * m, T + 1):
            raise DataError(
                f"{what}: stored sizes (observations {obs.size}, actions {act.size}, rewards {rew.size}) do not "
                f"match steps={T}, obs_dim={n}, act_dim={m} (expected {(T + 1) * n}, {T * m}, {T + 1})"
            )
        yield {
            **row,
            "observations": obs.reshape(T + 1, n),
            "actions": act.reshape(T, m),
            "rewards": rew,
            "spec": spec,
            "expert_settings": settings,
        }


def read_episodes(path: str | os.PathLike, env: str | None = None) -> list[dict]:
    """Every episode under ``path`` (optionally only ``env``'s), arrays reshaped; for small data and tests."""
    return [ep for f in dataset_files(path, env) for ep in _iter_file_episodes(f)]


@functools.lru_cache
def _registry_dims(env: str) -> tuple[int, int] | None:
    """(obs_dim, act_dim) of a registered env today, or None for a name the registry does not know."""
    from tdm_dist import envs

    if env not in envs.names():
        return None
    s = envs.spec(env)
    return s.obs_dim, s.act_dim


def _check_against_registry(file: Path, env: str, episode_id: int, spec: EnvSpec) -> None:
    dims = _registry_dims(env)
    if dims is not None and dims != (spec.obs_dim, spec.act_dim):
        raise DataError(
            f"{file}: episode {episode_id} of {env} has obs_dim={spec.obs_dim}, act_dim={spec.act_dim} but the "
            f"environment {env} has obs_dim={dims[0]}, act_dim={dims[1]}"
        )


def validate_dataset(path: str | os.PathLike) -> dict:
    """Open every file and check every episode; ``DataError`` names the file (and episode) of the first fault.

    Checks: readable Parquet with the episode schema, sizes consistent with steps/obs_dim/act_dim, finite
    values, dims equal to the stored spec's, the file in its env's partition, and unique ids per env.
    Returns ``{"files": ..., "episodes": ...}``.
    """
    files = dataset_files(path)
    root = Path(path)
    if root.is_dir() and any(p.name.endswith(".tmp") for p in root.rglob(".*")):
        log.warning("%s holds temporary files of interrupted writes; they are ignored", root)
    seen: dict[str, dict[int, Path]] = {}
    episodes = 0
    for f in files:
        for ep in _iter_file_episodes(f):
            env, eid, spec = ep["env"], ep["episode_id"], ep["spec"]
            if spec.obs_dim != ep["obs_dim"] or spec.act_dim != ep["act_dim"]:
                raise DataError(
                    f"{f}: episode {eid} of {env} has obs_dim={ep['obs_dim']}, act_dim={ep['act_dim']} but its spec "
                    f"says obs_dim={spec.obs_dim}, act_dim={spec.act_dim}"
                )
            check_episode(env, eid, ep["observations"], ep["actions"], ep["rewards"], spec, where=f"{f}: ")
            _check_against_registry(f, env, eid, spec)
            partition = next((p[4:] for p in f.parent.parts[::-1] if p.startswith("env=")), None)
            if partition is not None and partition != env:
                raise DataError(f"{f}: episode {eid} of {env} is stored in the partition of {partition}")
            if eid in seen.setdefault(env, {}):
                raise DataError(f"{f}: episode {eid} of {env} is also stored in {seen[env][eid]}")
            seen[env][eid] = f
            episodes += 1
    return {"files": len(files), "episodes": episodes}


def summarize(path: str | os.PathLike) -> dict:
    """Per env: episodes, steps, dims, experts and return statistics (for ``tdm data info``)."""
    tables = [read_table(f, SCALAR_COLUMNS) for f in dataset_files(path)]
    if not tables:
        return {}
    table = pa.concat_tables(tables)
    cols = {c: table.column(c).to_numpy(zero_copy_only=False) for c in SCALAR_COLUMNS}
    out = {}
    for env in sorted(set(cols["env"])):
        sel = cols["env"] == env
        ret = cols["return"][sel].astype(np.float64)
        q25, median, q75 = np.percentile(ret, [25, 50, 75])
        experts, counts = np.unique(cols["expert"][sel], return_counts=True)
        out[env] = {
            "episodes": int(sel.sum()),
            "steps": int(cols["steps"][sel].sum()),
            "obs_dim": int(cols["obs_dim"][sel].max()),
            "act_dim": int(cols["act_dim"][sel].max()),
            "experts": {str(e): int(c) for e, c in zip(experts, counts, strict=True)},
            "return": {
                "mean": float(ret.mean()),
                "std": float(ret.std()),
                "min": float(ret.min()),
                "q25": float(q25),
                "median": float(median),
                "q75": float(q75),
                "max": float(ret.max()),
            },
        }
    return out


def read_specs(path: str | os.PathLike) -> dict[str, dict]:
    """``{env: EnvSpec.to_dict()}`` of every env in the dataset, read from the ``spec`` column only."""
    specs: dict[str, dict] = {}
    for f in dataset_files(path):
        table = read_table(f, ["env", "spec"])
        for env, spec in zip(table.column("env").to_pylist(), table.column("spec").to_pylist(), strict=True):
            specs.setdefault(env, json.loads(spec))
    return specs
