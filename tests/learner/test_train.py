"""The learner on a real Ray runtime: training, checkpoints, resume after a killed worker, bad data."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from tdm_dist.data import EpisodeWriter
from tdm_dist.learner import TrainConfig, load_checkpoint, load_model, train
from tdm_dist.learner.train import lr_factor
from tests.data.conftest import synthetic_episode

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def episodes(tmp_path_factory):
    """Twelve short synthetic cartpole-swingup episodes with the real spec."""
    root = tmp_path_factory.mktemp("learner-data")
    with EpisodeWriter(root, rows_per_file=4) as w:
        w.write(synthetic_episode("cartpole-swingup", i, steps=60) for i in range(12))
    return root


def small_config(data, out, **kw) -> TrainConfig:
    base = dict(
        data=str(data), out=str(out), context=64, steps=12, batch_size=4, eval_every=6, val_fraction=0.2,
        warmup_steps=2, val_batches=2, model_overrides={"n_layer": 2, "d_model": 64, "n_head": 4, "d_ff": 128},
    )  # fmt: skip
    return TrainConfig(**{**base, **kw})


def test_unigram_baseline_is_the_entropy_of_the_token_frequencies():
    from tdm_dist.learner.train import unigram_nll

    tokens = torch.tensor([[1, 2, 1024, 7, 1, 2, 1024, 7]])  # obs_dim 1, act_dim 1: obs, reward, SEP, action
    windows = {"tokens": tokens, "obs_dim": torch.tensor([1]), "act_dim": torch.tensor([1])}
    # counted targets: 2, 7, 1, 2, 7 (SEP excluded); add-one smoothing over the 1026-token vocabulary
    p = {2: 3 / 1031, 7: 3 / 1031, 1: 2 / 1031}
    expected = -np.mean([np.log(p[t]) for t in (2, 7, 1, 2, 7)])
    assert unigram_nll(windows, windows) == pytest.approx(expected)


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(data="", out="", steps=100, warmup_steps=10, min_lr_ratio=0.1)
    factors = [lr_factor(s, cfg) for s in range(101)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(factors[10:]))
    assert factors[100] == pytest.approx(0.1)


def test_precision_is_fp32_bf16_or_what_the_hardware_computes_in():
    from tdm_dist.errors import ConfigError
    from tdm_dist.learner.train import computes_in_bf16, use_bf16

    cpu = torch.device("cpu")
    assert not use_bf16("fp32", cpu) and use_bf16("bf16", cpu)
    assert use_bf16("auto", cpu) == computes_in_bf16(cpu)
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if re.search(r"\b(avx512_bf16|amx_tile)\b", flags):  # what the kernel says this CPU has
        assert computes_in_bf16(cpu)
    elif "avx512" not in flags:  # without AVX-512 there is no native bfloat16 on x86
        assert not computes_in_bf16(cpu)
    with pytest.raises(ConfigError, match="precision must be one of fp32, bf16, auto, got 'fp16'"):
        TrainConfig(data="", out="", precision="fp16").check()


def test_two_workers_train_and_checkpoint(episodes, tmp_path, ray_session):
    result = train(small_config(episodes, tmp_path / "run", workers=2))
    assert result["step"] == 12 and np.isfinite(result["val/nll"])
    assert 0 < result["val/unigram_nll"] < np.log(1026) + 0.5  # the baseline reported beside it
    payload = torch.load(result["checkpoint"], weights_only=True)  # plain data only
    assert payload["step"] == 12 and payload["model_config"]["context"] == 64
    assert payload["env_specs"]["cartpole-swingup"]["act_dim"] == 1
    model = load_model(result["checkpoint"])
    assert model.cfg.n_layer == 2 and not model.training
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    # Fine-tuning starts from those weights with a schedule of its own, here under bfloat16 autocast.
    tuned = train(
        small_config(
            episodes, tmp_path / "tuned", workers=1, steps=6, init_from=str(tmp_path / "run"), precision="bf16"
        )
    )
    assert tuned["step"] == 6 and np.isfinite(tuned["val/nll"])
    recorded = load_checkpoint(tuned["checkpoint"])["train_config"]
    assert recorded["init_from"] and recorded["precision"] == "bf16"


def test_rerunning_a_finished_run_resumes_instead_of_restarting(episodes, tmp_path, ray_session):
    from tdm_dist.errors import ConfigError

    cfg = small_config(episodes, tmp_path / "run", workers=1)
    first = load_checkpoint(train(cfg)["checkpoint"])
    cfg.steps = 18  # the same --out with more steps continues from step 12
    second = load_checkpoint(train(cfg)["checkpoint"])
    assert first["step"] == 12 and second["step"] == 18
    cfg.context = 32  # another model in the same run directory cannot resume it
    with pytest.raises(ConfigError, match="context: 64 -> 32"):
        train(cfg)


def _train_worker_pids() -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().decode(errors="ignore")
            except OSError:
                continue
            if cmdline.startswith("ray::RayTrainWorker"):
                pids.append(int(proc.name))
    return pids


def test_killed_worker_resumes_from_the_last_checkpoint(episodes, tmp_path):
    """A real SIGKILL of a Ray Train worker mid-run: the run restarts its workers from the last checkpoint
    and completes its step count (FailureConfig)."""
    out = tmp_path / "run"
    args = ["--data", str(episodes), "--out", str(out), "--context", "64", "--steps", "150", "--eval-every", "10"]
    others = set(_train_worker_pids())  # workers of other Ray instances on this machine are not ours to kill
    log = tmp_path / "train.log"  # a file, not a pipe: nobody reads a pipe while the test waits
    proc = subprocess.Popen(
        [sys.executable, "-m", "tdm_dist.cli", "train", "--workers", "2", "--batch-size", "4", *args],
        cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 300
        # Kill only once the controller has registered a checkpoint (its snapshot file says so): a checkpoint
        # folder appears when the upload starts, and reports still queued on a dead worker are lost.
        snapshot = out / "train" / "checkpoint_manager_snapshot.json"
        registered = 0
        while not registered and time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
            try:
                latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result") or {}
                registered = latest.get("metrics", {}).get("step", 0)
            except (OSError, ValueError):
                pass
        pids = sorted(set(_train_worker_pids()) - others)
        assert pids and proc.poll() is None, "training ended before a worker could be killed"
        os.kill(pids[-1], signal.SIGKILL)
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = log.read_text()
    assert proc.returncode == 0, output[-3000:]
    resumed = [int(s) for s in re.findall(r"resuming from the checkpoint of step (\d+)", output)]
    story = "\n".join(line for line in output.splitlines() if re.search(r"RETRY|resuming|step \d+/|Error count", line))
    assert resumed and registered <= resumed[0] < 150, f"killed {pids[-1]} of {pids} after step {registered}:\n{story}"
    assert load_checkpoint(out / "model.pt")["step"] == 150
    assert len(re.findall(r"step 150/150 ", output)) == 1  # a progress line reaches the driver once


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tdm_dist.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_truncated_parquet_stops_training_with_the_file_name(episodes, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(episodes, data)
    victim = sorted(data.rglob("*.parquet"))[0]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    out = _cli("train", "--data", str(data), "--out", str(tmp_path / "run"), "--steps", "2")
    assert out.returncode == 2 and victim.name in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "run").exists()  # nothing partial written


def test_nan_observations_stop_training_with_file_and_episode(episodes, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(episodes, data)
    victim = sorted(data.rglob("*.parquet"))[0]
    table = pq.read_table(victim, partitioning=None)
    obs = table.column("observations").to_pylist()
    obs[1][3] = float("nan")
    table = table.set_column(table.schema.get_field_index("observations"), "observations", [obs])
    pq.write_table(table.cast(pq.read_schema(victim)), victim)
    episode = table.column("episode_id")[1].as_py()
    out = _cli("train", "--data", str(data), "--out", str(tmp_path / "run"), "--steps", "2")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert victim.name in out.stderr and f"episode {episode}" in out.stderr
    assert not (tmp_path / "run").exists()


def test_a_dataset_too_small_to_hold_out_validation_is_refused(tmp_path):
    from tdm_dist.errors import ConfigError

    with EpisodeWriter(tmp_path / "data") as w:
        w.add(synthetic_episode("cartpole-swingup", 0))
    with pytest.raises(ConfigError, match="at least 2"):
        train(small_config(tmp_path / "data", tmp_path / "run"))
    assert not (tmp_path / "run").exists()
