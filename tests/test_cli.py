"""The `tdm` command, run the way a user runs it: in a subprocess."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tdm_dist.demo import DemoConfig

ROOT = Path(__file__).resolve().parents[1]


def tdm(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return python("-m", "tdm_dist.cli", *args, timeout=timeout)


def python(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python ARGS...`` from the repository root, its output captured."""
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_help_lists_the_commands():
    out = tdm("--help")
    assert out.returncode == 0
    commands = (
        "envs",
        "model-info",
        "smoke",
        "demo",
        "collect",
        "data",
        "train",
        "finetune",
        "expert",
        "eval",
        "sweep",
    )
    for command in commands:
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


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["-N", "40"],
            "horizon 40 does not fit the context of the demo's TDM (256 tokens, 8 per step after the current "
            "observation); the longest horizon is 31",
        ),
        (["--replan-every", "0"], "replan_every must be an integer >= 1, got 0"),
        (["--episodes", "0"], "demo episodes must be >= 1, got 0"),
        (["--data-steps", "1001"], "demo data_steps must be in [1, 1000] (the episode length of cartpole-swingup)"),
        (["--sigma", "-1"], "planner sigma must be >= 0, got -1.0"),
    ],
)
def test_demo_rejects_bad_settings_before_starting(tmp_path, args, message):
    out = tdm("demo", "--out", str(tmp_path / "demo"), *args)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "demo").exists()


def test_demo_refuses_a_folder_made_with_other_settings(tmp_path):
    from tdm_dist.learner.checkpoint import save_checkpoint
    from tdm_dist.model import TDM, preset

    folder = tmp_path / "demo"
    save_checkpoint(folder / "run", TDM(preset("tiny", context=128)))  # an earlier version's demo: no settings.json
    out = tdm("demo", "--out", str(folder))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"{folder} holds {folder / 'run'} of an earlier demo without settings.json" in out.stderr
    assert not (folder / "data").exists()  # refused before collecting

    (folder / "settings.json").write_text(json.dumps({**DemoConfig().build(), "context": 128, "data_steps": 1000}))
    out = tdm("demo", "--out", str(folder), "--data-steps", "300")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "with other settings (data_steps 1000 -> 300, context 128 -> 256); delete" in out.stderr
    assert not (folder / "data").exists()


def test_smoke_is_a_working_vertical_slice():
    """Real env -> tokens -> training -> KV-cache imagination, in a subprocess, with a small budget."""
    # 200 steps: a TDM whose bin embeddings start smooth learns one episode by heart more slowly than one started at
    # random (measured with the current init: loss 2.66 after 120 steps, 1.08 after 200; 2.04 after 120 at random)
    out = tdm("smoke", "--steps", "200")
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


@pytest.mark.parametrize(
    "name,metric",
    [
        ("decode", "kv_speedup"),
        ("embedding_init", "xdot_nll_ratio"),
        ("ingest", "ingest_efficiency"),
        ("serve", "server_efficiency"),
        ("train", "bf16_speedup"),
    ],
)
def test_benchmarks_run_in_smoke_mode(name, metric):
    out = python(f"experiments/benchmarks/{name}.py", "--smoke")
    assert out.returncode == 0, out.stderr
    assert re.fullmatch(rf"{metric}=\d+(\.\d+)?", out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def cartpole_checkpoint(tmp_path_factory) -> Path:
    """A tiny random TDM whose checkpoint says it was trained on cartpole-swingup (n=5, m=1), context 128."""
    import torch

    from tdm_dist import envs
    from tdm_dist.learner.checkpoint import save_checkpoint
    from tdm_dist.model import TDM, preset

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("eval")
    save_checkpoint(root / "ckpt", TDM(preset("tiny", context=128)), env_specs={
        "cartpole-swingup": envs.spec("cartpole-swingup").to_dict()
    })  # fmt: skip
    (root / "notes.txt").write_text("not a checkpoint\n")
    return root


@pytest.mark.parametrize(
    "args,message",
    [
        pytest.param(
            ["--ckpt", "{root}/notes.txt"],
            r"{root}/notes.txt is not a readable checkpoint",
        ),
        (["--ckpt", "{root}/nowhere"], r"checkpoint {root}/nowhere does not exist"),
        (
            ["--env", "walker-walk", "--ckpt", "{root}/ckpt"],
            r"walker-walk has 24 observation and 6 action entries, but the checkpoint was trained on cartpole-swingup",
        ),
        (["--ckpt", "{root}/ckpt", "--horizon", "0"], r"planner horizon must be an integer >= 1, got 0"),
        (["--ckpt", "{root}/ckpt", "--samples", "0"], r"planner samples must be an integer >= 1, got 0"),
        (["--ckpt", "{root}/ckpt", "--planner", "bogus"], r"planner kind must be one of shooting, cem, proposal"),
        (["--ckpt", "{root}/ckpt", "--horizon", "16"], r"horizon 16 does not fit .* the longest horizon is 15"),
    ],
    ids=["not-a-checkpoint", "missing-checkpoint", "env-dims-mismatch", "horizon-0", "samples-0", "bogus-planner",
         "horizon-too-long"],
)  # fmt: skip
def test_eval_rejects_bad_settings_before_starting_ray(cartpole_checkpoint, args, message):
    root = str(cartpole_checkpoint)
    args = [a.format(root=root) for a in args]
    if "--env" not in args:
        args = ["--env", "cartpole-swingup", *args]
    out = tdm("eval", *args, "--episodes", "1", "--steps", "5")
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr  # one line: no Ray start-up log (the settings are checked first)
    assert lines[0].startswith("tdm eval: error: ")
    assert re.search(message.format(root=re.escape(root)), lines[0]), lines[0]
    assert out.stdout == ""


def test_eval_of_a_text_file_is_a_checkpoint_error_not_a_traceback(cartpole_checkpoint):
    out = tdm("eval", "--env", "cartpole-swingup", "--ckpt", str(cartpole_checkpoint / "notes.txt"))
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""
    first = out.stderr.splitlines()[0]
    assert first.startswith(f"tdm eval: error: {cartpole_checkpoint / 'notes.txt'} is not a readable checkpoint")


def test_eval_with_several_servers_finishes_on_a_local_instance(cartpole_checkpoint, tmp_path):
    # Each ModelServer takes a CPU: a local instance sized for one server left the second pending for good.
    args = ["--env", "cartpole-swingup", "--ckpt", str(cartpole_checkpoint / "ckpt"), "--servers", "3"]
    out = tdm(
        "eval", *args, "--episodes", "2", "--steps", "3", "-K", "4", "-N", "3", "--json", str(tmp_path / "r.json")
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads((tmp_path / "r.json").read_text())
    assert len(result["returns"]) == 2 and result["settings"]["servers"] == 3


@pytest.mark.parametrize(
    "args,message",
    [
        ([], r"name the models to sweep: --ckpt CKPT and/or --models"),
        (["--models", "ground-truth", "--horizons", "5,x"], r"--horizons/-N: expected integers separated by commas"),
        (["--ckpt", "{root}/ckpt", "--horizons", "5,16"], r"horizon 16 does not fit .* the longest horizon is 15"),
        (["--models", "ground-truth", "--search", "grid-ish"], r"unknown search .grid-ish.; expected one of grid"),
    ],
    ids=["no-models", "bad-list", "horizon-too-long", "bad-search"],
)  # fmt: skip
def test_sweep_rejects_bad_settings_before_starting_ray(cartpole_checkpoint, tmp_path, args, message):
    root = str(cartpole_checkpoint)
    out = tdm("sweep", "--env", "cartpole-swingup", "--out", str(tmp_path), *[a.format(root=root) for a in args])
    assert out.returncode == 2 and "Traceback" not in out.stderr and out.stdout == ""
    assert re.search(message, out.stderr.strip().splitlines()[-1]), out.stderr


def test_the_one_gpu_script_trains_and_sweeps_in_one_process_without_ray(tmp_path):
    """experiments/one_gpu_sweep.py (the GPU machines have no Ray): a model trained in process, then MPC episodes
    through a LocalModelServer with each planner at each N, with the results written as it goes."""
    from tdm_dist.data import EpisodeWriter
    from tdm_dist.learner.checkpoint import load_model
    from tests.data.conftest import synthetic_episode

    data, out = tmp_path / "data", tmp_path / "out"
    with EpisodeWriter(data) as w:
        w.write(synthetic_episode("cartpole-swingup", i, steps=60) for i in range(6))
    args = ["--data", data, "--out", out, "--context", 64, "--batch-size", 4, "--epochs", 2, "--train-seconds", 3]
    args += ["--samples", 4, "--horizons", "2,3", "--replan-every", 2, "--episodes", 3, "--agents", 2, "--steps", 5]
    run = python("experiments/one_gpu_sweep.py", *args, "--planners", "shooting,proposal")
    assert run.returncode == 0, run.stderr
    assert re.fullmatch(r"best planner=(shooting|proposal) N=[23] tdm=-?\d+\.\d", run.stdout.strip().splitlines()[-1])
    sweep = json.loads((out / "sweep.json").read_text())
    assert [(r["planner"], r["horizon"]) for r in sweep["results"]] == [
        ("shooting", 2), ("shooting", 3), ("proposal", 2), ("proposal", 3)
    ]  # fmt: skip
    assert all(len(r["returns"]) == 3 and r["server"]["requests"] > 0 for r in sweep["results"])
    trained = json.loads((out / "train.json").read_text())
    assert trained["best_val_nll"] == min(p["val_nll"] for p in trained["curve"])
    assert load_model(out / "model.pt").cfg.context == 64

    # A horizon the context cannot hold fails before any training, in one line (the last --horizons and --out win).
    bad = python("experiments/one_gpu_sweep.py", *args, "--horizons", "2,9", "--out", tmp_path / "bad")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "horizon 9 does not fit the context of the TDM (64 tokens" in bad.stderr
    assert not (tmp_path / "bad").exists()
    unknown = python("experiments/one_gpu_sweep.py", *args, "--planners", "shooting,mppi", "--out", tmp_path / "bad")
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr
    assert "planner kind must be one of shooting, cem, proposal, got 'mppi'" in unknown.stderr
    assert not (tmp_path / "bad").exists()
