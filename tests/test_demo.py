"""The main job, ``tdm demo``, end to end at a budget of about two minutes (the full run is ~10 minutes)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tdm_dist.data import read_episodes
from tdm_dist.demo import DemoConfig
from tdm_dist.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_demo_runs_every_stage_and_ends_with_the_machine_readable_line(tmp_path):
    args = ["--out", str(tmp_path / "demo"), "--data-episodes", "2", "--train-steps", "30", "--episodes", "2"]
    args += ["--data-steps", "60", "--steps", "15"]
    out = subprocess.run(
        [sys.executable, "-m", "tdm_dist.cli", "demo", *args], capture_output=True, text=True, timeout=900, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr[-3000:]
    # The local instance serves the State API (its dashboard): without it Ray Train's placement-group cleaner
    # warned once a second of training, hundreds of lines in a full demo.
    assert "Failed to query Ray Train Controller actor state" not in out.stdout + out.stderr
    last = out.stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"demo tdm=(\S+) ground_truth=(\S+) random=(\S+) wall_s=(\d+)", last)
    assert match, last
    summary = json.loads((tmp_path / "demo" / "demo.json").read_text())
    for name, value in zip(("tdm", "ground_truth", "random"), match.groups()[:3], strict=True):
        result = summary["results"][name]
        assert len(result["returns"]) == 2 and result["settings"]["steps"] == 15
        assert float(value) == round(result["mean_return"], 1)
        # the TDM plans with its own BC proposal (§5.1.1); the ground truth, with no policy, by random shooting
        planner = result["settings"]["planner"]
        assert (planner["kind"], planner["samples"], planner["horizon"]) == (
            "proposal" if name == "tdm" else "shooting",
            32,
            25,
        )
    assert (tmp_path / "demo" / "demo.png").stat().st_size > 0
    assert [len(ep["actions"]) for ep in read_episodes(tmp_path / "demo" / "data")] == [60, 60]
    # A second run reuses the dataset and the trained model.
    again = subprocess.run(
        [sys.executable, "-m", "tdm_dist.cli", "demo", *args], capture_output=True, text=True, timeout=900, cwd=ROOT
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "reusing" in again.stdout and "training" not in again.stdout


def test_an_unknown_tdm_planner_is_a_config_error():
    with pytest.raises(ConfigError, match="demo tdm_planner must be one of proposal, shooting, got 'cem'"):
        DemoConfig(tdm_planner="cem").check()
