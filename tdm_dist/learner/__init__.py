"""The learner: Ray Train loop and checkpoints."""

from tdm_dist.learner.checkpoint import load_checkpoint, load_model, resolve_checkpoint, save_checkpoint
from tdm_dist.learner.train import TrainConfig, train

__all__ = ["TrainConfig", "load_checkpoint", "load_model", "resolve_checkpoint", "save_checkpoint", "train"]
