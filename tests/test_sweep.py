"""``tdm sweep``: Ray Tune trials of MPC evaluations on a real Ray runtime, with real MuJoCo."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tdm_dist.errors import ConfigError
from tdm_dist.runtime.evaluate import EvalConfig
from tdm_dist.sweep import SweepConfig, SweepFailed, parse_models, run_sweep
from tests.runtime.test_evaluate import actors

ROOT = Path(__file__).resolve().parents[1]
ENV = "cartpole-swingup"


def small(out, models, **changes) -> SweepConfig:
    base = EvalConfig(env=ENV, episodes=1, agents=1, steps=6)
    return SweepConfig(base=base, models=models, **{"horizons": [2, 3], "samples": [4], "out": str(out), **changes})


def test_parse_models_names_every_line():
    assert parse_models("tdm,ground-truth,ctx256=runs/b", "runs/a") == {
        "tdm": "runs/a",
        "ground-truth": None,
        "ctx256": "runs/b",
    }
    with pytest.raises(ConfigError, match="needs a checkpoint"):
        parse_models("tdm,random")
    with pytest.raises(ConfigError, match="bad model 'mlp'"):
        parse_models("mlp")


def test_bad_sweep_settings_fail_before_ray_starts(tmp_path, checkpoint):
    for changes, message in [
        ({"horizons": [0, 5]}, "horizons must be integers >= 1"),
        ({"samples": []}, "samples must be integers >= 1"),
        ({"search": "bayes"}, "unknown search 'bayes'"),
        ({"search": "optuna"}, "tunes the planner of one model, got 2"),
        ({"horizons": [5, 40]}, "horizon 40 does not fit the context of the model"),  # checked at the longest N
    ]:
        with pytest.raises(ConfigError, match=message):
            small(tmp_path, {"tdm": checkpoint, "random": None}, **changes).check()
    with pytest.raises(ConfigError, match="not a BC policy"):
        cfg = small(tmp_path, {"random": None})
        cfg.base = cfg.base.replace(policy="bc")
        cfg.check()


def test_trials_share_the_driver_s_model_server(ray_session, tmp_path, checkpoint, monkeypatch):
    before = set(actors("ModelServer"))
    monkeypatch.chdir(Path(checkpoint).parent)  # a relative checkpoint path: trials run in folders of their own
    rows = run_sweep(small(tmp_path, {"tdm": Path(checkpoint).name, "ground-truth": None}), progress=False)
    assert [(r["model"], r["horizon"]) for r in rows] == [
        ("tdm", 2),
        ("tdm", 3),
        ("ground-truth", 2),
        ("ground-truth", 3),
    ]
    assert all(r["episodes"] == 1 and not r["stopped"] and len(r["returns"]) == 1 for r in rows)
    assert len(set(actors("ModelServer")) - before) == 1  # one server for both TDM trials, started by the driver
    table = (tmp_path / "sweep.csv").read_text().splitlines()
    assert table[0].startswith("model,samples,horizon,mean_return,ci68") and len(table) == 5
    assert json.loads((tmp_path / "sweep.json").read_text()) == rows
    assert (tmp_path / "sweep.png").stat().st_size > 0
    with pytest.raises(ConfigError, match="holds a sweep with other settings"):
        run_sweep(small(tmp_path, {"ground-truth": None}), progress=False)


def test_optuna_search_tunes_the_planner_under_asha(ray_session, tmp_path):
    cfg = small(tmp_path, {"ground-truth": None}, search="optuna", trials=3, horizons=[2, 6])
    cfg.base = cfg.base.replace(episodes=2, agents=2)
    rows = run_sweep(cfg, progress=False)
    assert len(rows) == 3
    for r in rows:
        assert 2 <= r["horizon"] <= 6 and r["samples"] == 4
        assert 0 <= r["beta"] <= 3 and 0.25 <= r["variance"] <= 4
        assert 1 <= r["episodes"] <= 2 and r["stopped"] == (r["episodes"] < 2)


def test_failed_trials_are_reported_and_retried_by_the_same_command(ray_session, tmp_path, checkpoint):
    empty = tmp_path / "no-episodes"
    empty.mkdir()
    cfg = small(tmp_path / "sweep", {"tdm": checkpoint}, horizons=[2])
    cfg.base = cfg.base.replace(prompt=str(empty))  # every trial fails: no episode to prompt with
    with pytest.raises(SweepFailed, match=r"1 of 1 trials failed .* has no episode of cartpole-swingup.*retries them"):
        run_sweep(cfg, progress=False)
    assert (tmp_path / "sweep" / "sweep.csv").exists() and not (tmp_path / "sweep" / "sweep.json").exists()
    with pytest.raises(SweepFailed, match="1 of 1 trials failed"):  # retried (and failing again), not skipped
        run_sweep(cfg, progress=False)


def sweep_command(out: Path) -> list[str]:
    return [sys.executable, "-m", "tdm_dist.cli", "sweep", "--env", ENV, "--models", "ground-truth",
            "--horizons", "1,2,3,4", "--samples", "4", "--episodes", "1", "--steps", "30", "--agents", "1",
            "--out", str(out)]  # fmt: skip


def finished_trials(out: Path) -> dict[str, bytes]:
    """Trial folder -> its result.json, for the trials whose last report says they finished."""
    return {
        f.parent.name: f.read_bytes()
        for f in (out / "tune").glob("*/result.json")
        if '"finished": true' in f.read_text()
    }


def own_lines(output: str) -> str:
    """The command's own output, without the lines Ray forwards from its workers ("(MPCAgent pid=12) ...").

    Actors that Tune kills on Ctrl-C may print Ray's own SIGTERM traceback while they exit; that is Ray's
    shutdown noise, not an error of the command.
    """
    worker = re.compile(r"^(\x1b\[[0-9;]*m)?\(\w+ pid=\d+")
    return "\n".join(line for line in output.splitlines() if not worker.match(line))


def test_an_interrupted_sweep_resumes_without_rerunning_finished_trials(tmp_path):
    out = tmp_path / "sweep"
    process = subprocess.Popen(sweep_command(out), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not finished_trials(out) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.5)
    process.send_signal(signal.SIGINT)  # Ctrl-C: Tune saves its state and stops
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "run the same command to resume" in stderr and "Traceback" not in own_lines(stderr)
    before = finished_trials(out)
    assert 1 <= len(before) < 4

    rerun = subprocess.run(sweep_command(out), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    after = finished_trials(out)
    assert len(after) == 4
    assert {name: after[name] for name in before} == before  # finished trials were not run again
    rows = json.loads((out / "sweep.json").read_text())
    assert sorted(r["horizon"] for r in rows) == [1, 2, 3, 4] and all(r["episodes"] == 1 for r in rows)
