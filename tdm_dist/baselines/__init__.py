"""The baseline dynamics models of paper §5.1 (MLP variants, PETS, RSSM) as plain PyTorch modules."""

from tdm_dist.baselines.mlp import Baseline, MLPConfig, MLPDynamics, num_params, preset
from tdm_dist.baselines.model import NAMES, BaselineModel, build, load_baseline, rebuild, segments, transitions
from tdm_dist.baselines.pets import PETS, PETSConfig
from tdm_dist.baselines.rssm import RSSM, RSSMConfig

__all__ = [
    "NAMES",
    "PETS",
    "RSSM",
    "Baseline",
    "BaselineModel",
    "MLPConfig",
    "MLPDynamics",
    "PETSConfig",
    "RSSMConfig",
    "build",
    "load_baseline",
    "num_params",
    "preset",
    "rebuild",
    "segments",
    "transitions",
]
