"""The `tdm` command, run the way a user runs it: in a subprocess."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def tdm(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tdm_dist.cli", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def test_help_lists_the_commands():
    out = tdm("--help")
    assert out.returncode == 0
    for command in ("envs", "model-info", "smoke", "collect", "data", "train", "finetune", "expert"):
        assert command in out.stdout


def test_envs_lists_every_suite_task():
    from dm_control import suite

    out = tdm("envs")
    assert out.returncode == 0, out.stderr
    assert f"{len(suite.ALL_TASKS)} environments" in out.stdout
    row = next(line for line in out.stdout.splitlines() if line.startswith("cartpole-swingup "))
    assert row.split() == ["cartpole-swingup", "5", "1", "yes"]
    assert next(line for line in out.stdout.splitlines() if line.startswith("finger-spin ")).split()[-1] == "no"


@pytest.mark.parametrize("name,target", [("base", 77e6), ("large", 362e6)])
def test_model_info_matches_the_paper_sizes(name, target):
    out = tdm("model-info", "--preset", name, "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert abs(info["parameters"] / target - 1) < 0.10
    assert info["context"] == 1023


def test_bad_input_is_a_message_not_a_traceback():
    out = tdm("model-info", "--preset", "huge")
    assert out.returncode == 2
    assert "unknown model preset 'huge'" in out.stderr and "Traceback" not in out.stderr


def test_smoke_is_a_working_vertical_slice():
    """Real env -> tokens -> training -> KV-cache imagination, in a subprocess, with a small budget."""
    out = tdm("smoke", "--steps", "120")
    assert out.returncode == 0, out.stderr
    last = out.stdout.strip().splitlines()[-1]
    fields = dict(re.findall(r"(\w+)=(\S+)", last))
    assert last.startswith("smoke ") and fields["kv_matches_naive"] == "True"
    assert float(fields["loss_last"]) < float(fields["loss_first"]) / 3
    assert float(fields["rmse_1step"]) < 0.5  # observations have unit scale; an untrained model is far off


def test_readme_library_example_runs():
    text = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})


@pytest.mark.parametrize("name,metric", [("decode", "kv_speedup"), ("ingest", "ingest_efficiency")])
def test_benchmarks_run_in_smoke_mode(name, metric):
    out = subprocess.run(
        [sys.executable, f"experiments/benchmarks/{name}.py", "--smoke"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert re.fullmatch(rf"{metric}=\d+(\.\d+)?", out.stdout.strip().splitlines()[-1])
