"""The baseline dynamics models of paper §5.1 (MLP variants, PETS) as plain PyTorch modules."""

from tdm_dist.baselines.mlp import Baseline, MLPConfig, MLPDynamics, num_params, preset
from tdm_dist.baselines.model import NAMES, BaselineModel, build, load_baseline, save_baseline, transitions
from tdm_dist.baselines.pets import PETS, PETSConfig

__all__ = [
    "NAMES",
    "PETS",
    "Baseline",
    "BaselineModel",
    "MLPConfig",
    "MLPDynamics",
    "PETSConfig",
    "build",
    "load_baseline",
    "num_params",
    "preset",
    "save_baseline",
    "transitions",
]
