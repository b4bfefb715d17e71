"""The Parquet episode store: round trip, atomic writes, resume, validation, summary."""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace

import numpy as np
import pyarrow.parquet as pq
import pytest

from tdm_dist.data import EpisodeWriter, existing_ids, read_episodes, summarize, validate_dataset
from tdm_dist.data.episodes import _episode_row, _rows_to_table, dataset_files, partition_dir
from tdm_dist.envs import spec
from tdm_dist.errors import DataError


def hidden_files(root):
    return [p for p in root.rglob(".*")]


def write_raw(root, rows, env="cartpole-swingup", name="part-raw.parquet"):
    """Write rows straight to a file, bypassing the writer's validation (to make bad datasets)."""
    path = partition_dir(root, env) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(_rows_to_table(rows), path)
    return path


def test_round_trip_is_exact(tmp_path, make_episode):
    episodes = [make_episode("cartpole-swingup", i) for i in range(3)] + [make_episode("walker-stand", 7, steps=20)]
    with EpisodeWriter(tmp_path) as w:
        for ep in episodes:
            w.add(ep)
    files = dataset_files(tmp_path)
    assert {f.parent.name for f in files} == {"env=cartpole-swingup", "env=walker-stand"}
    got = {(e["env"], e["episode_id"]): e for e in read_episodes(tmp_path)}
    assert len(got) == 4
    for ep in episodes:
        e = got[(ep["env"], ep["episode_id"])]
        for key in ("observations", "actions", "rewards"):
            assert e[key].dtype == np.float32 and np.array_equal(e[key], ep[key]), key
        T = len(ep["actions"])
        assert (e["steps"], e["obs_dim"], e["act_dim"]) == (T, ep["spec"].obs_dim, ep["spec"].act_dim)
        assert e["spec"] == ep["spec"]
        assert e["seed"] == ep["seed"] and e["expert"] == "random" and e["expert_settings"] == {"noise": 0.5}
        assert e["return"] == pytest.approx(float(ep["rewards"].astype(np.float64).sum()))
    assert [e["episode_id"] for e in read_episodes(tmp_path, env="walker-stand")] == [7]


def test_writes_are_atomic_and_readers_skip_temporary_files(tmp_path, make_episode, monkeypatch):
    with EpisodeWriter(tmp_path) as w:
        w.add(make_episode("cartpole-swingup", 0))
    assert hidden_files(tmp_path) == []
    stray = partition_dir(tmp_path, "cartpole-swingup") / ".part-crashed.parquet.tmp"
    stray.write_bytes(b"PAR1 half a file")
    assert [e["episode_id"] for e in read_episodes(tmp_path)] == [0]
    assert validate_dataset(tmp_path) == {"files": 1, "episodes": 1}
    assert existing_ids(tmp_path, "cartpole-swingup") == {0}

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    w = EpisodeWriter(tmp_path)
    w.add(make_episode("cartpole-swingup", 1))
    with pytest.raises(OSError, match="disk full"):
        w.flush()
    assert hidden_files(tmp_path) == [stray]  # the failed write left no temporary file behind
    assert existing_ids(tmp_path, "cartpole-swingup") == {0}


def test_resume_skips_existing_ids_and_rejects_duplicates(tmp_path, make_episode):
    EpisodeWriter(tmp_path).write(make_episode("walker-stand", i, steps=5) for i in range(3))
    assert existing_ids(tmp_path, "walker-stand") == {0, 1, 2}
    assert existing_ids(tmp_path, "cartpole-swingup") == set()
    assert existing_ids(tmp_path / "nowhere", "walker-stand") == set()

    done = existing_ids(tmp_path, "walker-stand")
    w = EpisodeWriter(tmp_path)
    w.write(make_episode("walker-stand", i, steps=5) for i in range(5) if i not in done)
    assert sorted(e["episode_id"] for e in read_episodes(tmp_path)) == [0, 1, 2, 3, 4]
    with pytest.raises(DataError, match="episode 2 of walker-stand is already"):
        w.add(make_episode("walker-stand", 2, steps=5))
    assert validate_dataset(tmp_path)["episodes"] == 5


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda ep: ep["observations"].__setitem__((3, 1), np.nan), r"episode 4 of cartpole-swingup: observations"),
        (lambda ep: ep["actions"].__setitem__((0, 0), np.inf), r"episode 4 of cartpole-swingup: actions must be"),
        (lambda ep: ep.update(observations=ep["observations"][:, :4]), r"4 entries, .* obs_dim=5"),
        (lambda ep: ep.update(actions=ep["actions"][:-1]), r"actions must be \[50, 1\]"),
        (lambda ep: ep.update(rewards=ep["rewards"][:-1]), r"rewards must be \[51\]"),
        (lambda ep: ep["rewards"].__setitem__(0, 1.0), r"rewards\[0\] must be 0"),
        (lambda ep: ep.update(spec=spec("walker-stand")), r"spec is for 'walker-stand'"),
        (lambda ep: ep.update(env="../up"), r"env must be a registry name"),
        (lambda ep: ep.update(steps=7), r"steps=7 disagrees"),
        (lambda ep: ep.pop("actions"), r"needs the key 'actions'"),
    ],
)
def test_writer_rejects_bad_episodes(tmp_path, make_episode, change, match):
    ep = make_episode("cartpole-swingup", 4)
    change(ep)
    with pytest.raises(DataError, match=match):
        EpisodeWriter(tmp_path).add(ep)
    assert dataset_files(tmp_path) == []


def test_truncated_file_names_the_file(tmp_path, make_episode):
    (path,) = EpisodeWriter(tmp_path).write([make_episode("cartpole-swingup", 0)])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    for read in (validate_dataset, read_episodes, summarize):
        with pytest.raises(DataError, match=re.escape(f"{path}: not a readable Parquet file")):
            read(tmp_path)


def test_validate_names_file_and_episode_of_nan_values(tmp_path, make_episode):
    EpisodeWriter(tmp_path).write([make_episode("cartpole-swingup", 0)])
    row = _episode_row(make_episode("cartpole-swingup", 7))
    row["rewards"] = row["rewards"].copy()
    row["rewards"][5] = np.nan
    bad = write_raw(tmp_path, [row])
    with pytest.raises(DataError, match=re.escape(f"{bad}: episode 7 of cartpole-swingup: rewards must be finite")):
        validate_dataset(tmp_path)


def test_validate_names_file_and_episode_of_dims_that_disagree_with_the_spec(tmp_path, make_episode):
    row = _episode_row(make_episode("cartpole-swingup", 3))
    s = spec("cartpole-swingup")
    row["spec"] = json.dumps(replace(s, obs_keys=(("position", 3), ("velocity", 3))).to_dict())
    bad = write_raw(tmp_path, [row])
    match = re.escape(f"{bad}: episode 3 of cartpole-swingup has obs_dim=5") + ".*spec says obs_dim=6"
    with pytest.raises(DataError, match=match):
        validate_dataset(tmp_path)

    row = _episode_row(make_episode("cartpole-swingup", 3))
    row["observations"] = row["observations"][:-2]  # sizes no longer match steps * obs_dim
    bad = write_raw(tmp_path, [row])
    with pytest.raises(DataError, match=re.escape(f"{bad}: episode 3 of cartpole-swingup: stored sizes")):
        validate_dataset(tmp_path)


def test_validate_names_episodes_whose_dims_disagree_with_the_registered_env(tmp_path, make_episode):
    """A self-consistent episode that claims to be cartpole-swingup with 6 observation entries."""
    ep = make_episode("cartpole-swingup", 4)
    s = replace(spec("cartpole-swingup"), obs_keys=(("position", 3), ("velocity", 3)))
    ep["observations"] = np.concatenate([ep["observations"], ep["observations"][:, :1]], axis=1)
    row = _episode_row({**ep, "spec": s})
    bad = write_raw(tmp_path, [row])
    match = re.escape(f"{bad}: episode 4 of cartpole-swingup has obs_dim=6") + ".*environment.*obs_dim=5"
    with pytest.raises(DataError, match=match):
        validate_dataset(tmp_path)


def test_validate_finds_duplicates_and_misplaced_episodes(tmp_path, make_episode):
    EpisodeWriter(tmp_path).write([make_episode("cartpole-swingup", 0)])
    write_raw(tmp_path, [_episode_row(make_episode("cartpole-swingup", 0))], name="part-zz.parquet")
    with pytest.raises(DataError, match="episode 0 of cartpole-swingup is also stored in"):
        validate_dataset(tmp_path)
    (tmp_path / "env=cartpole-swingup" / "part-zz.parquet").unlink()
    write_raw(tmp_path, [_episode_row(make_episode("cartpole-swingup", 1))], env="walker-stand")
    with pytest.raises(DataError, match="stored in the partition of walker-stand"):
        validate_dataset(tmp_path)


def test_summarize(dataset):
    info = summarize(dataset)
    assert sorted(info) == ["cartpole-swingup", "walker-stand"]
    walker = info["walker-stand"]
    assert walker["episodes"] == 7 and walker["steps"] == sum(40 + 5 * i for i in range(6)) + 3
    assert (walker["obs_dim"], walker["act_dim"], walker["experts"]) == (24, 6, {"random": 7})
    returns = [e["return"] for e in read_episodes(dataset, env="walker-stand")]
    r = walker["return"]
    assert r["mean"] == pytest.approx(np.mean(returns)) and r["std"] == pytest.approx(np.std(returns))
    assert r["min"] <= r["q25"] <= r["median"] <= r["q75"] <= r["max"] == pytest.approx(max(returns))
    assert validate_dataset(dataset) == {"files": 6, "episodes": 14}


def test_missing_dataset_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no episode dataset"):
        read_episodes(tmp_path / "missing")
