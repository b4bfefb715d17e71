"""``tdm prederr`` (App. G): the simulator's runs, the error measure, and the models' curves."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tdm_dist import envs
from tdm_dist.baselines import build
from tdm_dist.errors import ConfigError
from tdm_dist.learner.checkpoint import save_checkpoint
from tdm_dist.prederr import PredErrConfig, ground_truth, prediction_errors, rms_errors, write_results

ENV = "cartpole-swingup"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> str:
    """An untrained mlp-delta (identity normalization) that says it models cartpole-swingup."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("mlp")
    save_checkpoint(path, build("mlp-delta", 5, 1), env_specs={ENV: envs.spec(ENV).to_dict()})
    return str(path)


def test_velocities_are_left_out_of_the_compared_entries():
    assert PredErrConfig.static_entries(envs.spec(ENV)).tolist() == [0, 1, 2]  # position[3], velocity[2]
    walker = envs.spec("walker-stand")  # orientations[14], height[1], velocity[9]
    assert PredErrConfig.static_entries(walker).tolist() == list(range(15))
    dog = envs.spec("manipulator-bring_ball")  # arm_vel and object_vel go too
    kept = PredErrConfig.static_entries(dog)
    assert len(kept) == dog.obs_dim - 8 - 3 and 16 not in kept


def test_rms_error_is_over_the_kept_entries_only():
    truth = np.zeros((1, 2, 3))
    predicted = np.array([[[3.0, 4.0, 100.0], [0.0, 0.0, 0.0]]])
    np.testing.assert_allclose(rms_errors(predicted, truth, np.array([0, 1])), [[np.sqrt(12.5), 0.0]])


def test_the_runs_are_what_the_simulator_does_with_the_planners_actions():
    cfg = PredErrConfig(env=ENV, models={}, horizon=6, runs=3, seed=4)
    first, actions, truth = ground_truth(cfg)
    assert first.shape == (3, 5) and actions.shape == (3, 6, 1) and truth.shape == (3, 6, 5)
    assert np.all(np.abs(actions) <= 1) and len(np.unique(actions)) > 6  # colored noise, clipped
    env = envs.make(ENV)
    for i in range(3):  # replayed step by step from the same initial state
        np.testing.assert_allclose(env.reset(seed=4_000_000 + i), first[i])
        for t in range(6):
            np.testing.assert_allclose(env.step(actions[i, t])[0], truth[i, t], rtol=1e-6, atol=1e-8)
    again = ground_truth(cfg)
    assert all(np.array_equal(a, b) for a, b in zip(again, (first, actions, truth), strict=True))


def test_models_curves_are_medians_over_runs_and_reproducible(checkpoint, baseline):
    cfg = PredErrConfig(env=ENV, models={"tdm": checkpoint, "mlp": baseline}, horizon=8, runs=4, greedy=True)
    result = prediction_errors(cfg, progress=False)
    assert result["entries"] == ["position[0]", "position[1]", "position[2]"]
    for name in ("tdm", "mlp"):
        runs = np.asarray(result["models"][name]["runs"])
        assert runs.shape == (4, 8) and np.all(np.isfinite(runs)) and np.all(runs >= 0)
        np.testing.assert_allclose(result["models"][name]["median"], np.median(runs, axis=0))
    assert prediction_errors(cfg, progress=False)["models"] == result["models"]  # seeded
    # An untrained model drifts: its error grows with the horizon.
    mlp = np.asarray(result["models"]["mlp"]["median"])
    assert mlp[-1] > mlp[0]


def test_a_horizon_beyond_the_tdms_context_names_the_longest(checkpoint):
    cfg = PredErrConfig(env=ENV, models={"tdm": checkpoint}, horizon=40, runs=2)
    message = r"horizon 40 does not fit the context of the TDM .*ckpt.*the longest horizon is 15"
    with pytest.raises(ConfigError, match=message):
        prediction_errors(cfg, progress=False)


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="at least one model"):
        PredErrConfig(env=ENV, models={}).check()
    with pytest.raises(ConfigError, match="runs must be an integer >= 1, got 0"):
        PredErrConfig(env=ENV, models={"m": "x"}, runs=0).check()
    with pytest.raises(ConfigError, match="horizon must be <= 1000"):
        PredErrConfig(env=ENV, models={"m": "x"}, horizon=5000).check()


def test_the_command_writes_the_table_the_files_and_the_plot(baseline, tmp_path):
    out = tmp_path / "pe"
    cmd = [sys.executable, "-m", "tdm_dist.cli", "prederr", "--env", ENV, "--models", f"mlp={baseline}",
           "--horizon", "5", "--runs", "3", "--out", str(out)]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "N=5" in done.stdout and "mlp" in done.stdout
    assert (out / "prederr.png").stat().st_size > 0
    assert (out / "prederr.csv").read_text().splitlines()[0] == "horizon,mlp"
    assert len(json.loads((out / "prederr.json").read_text())["models"]["mlp"]["runs"]) == 3
    refused = subprocess.run([*cmd[:6], "--models", "ground-truth"], cwd=ROOT, capture_output=True, text=True)
    assert refused.returncode == 2 and "ground-truth predicts nothing" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_write_results_plots_every_model(tmp_path):
    result = {"settings": {"env": ENV, "runs": 2, "horizon": 3}, "entries": [],
              "models": {"a": {"median": [1, 2, 3], "runs": [[1, 2, 3], [1, 2, 3]]},
                         "b": {"median": [2, 3, 4], "runs": [[2, 3, 4], [2, 3, 4]]}}}  # fmt: skip
    write_results(result, tmp_path)
    assert (tmp_path / "prederr.csv").read_text().splitlines() == ["horizon,a,b", "1,1,2", "2,2,3", "3,3,4"]
