"""Shared fixtures."""

from __future__ import annotations

import os
import warnings

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")  # no display on CI; rendering tests pick their own backend
warnings.filterwarnings("ignore", message=".*DISPLAY environment variable is missing.*")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for every test that needs it (starting Ray costs seconds).

    Four logical CPUs on any machine: two Ray Train workers plus Ray Data's tasks must fit, as they do
    when ``tdm train`` starts its own local instance (``runtime.cluster.init_ray``).
    """
    import ray
    from ray.data import DataContext

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    DataContext.get_current().enable_progress_bars = False
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> str:
    """A tiny random TDM (context 128) that knows it was trained on cartpole-swingup."""
    import torch

    from tdm_dist import envs
    from tdm_dist.learner.checkpoint import save_checkpoint
    from tdm_dist.model import TDM, preset

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt")
    env = "cartpole-swingup"
    save_checkpoint(path, TDM(preset("tiny", context=128)), env_specs={env: envs.spec(env).to_dict()})
    return str(path)
