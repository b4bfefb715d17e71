"""Checkpoints: one ``model.pt`` file per checkpoint, loadable with ``torch.load(weights_only=True)``.

A checkpoint holds plain data only (no pickled classes): the model config, the weights, the optimizer
and schedule state, the step, the resolved train config and the specs of the training environments, so
that ``load_model`` rebuilds exactly the model that was trained (STYLE 11) and evaluation can check
that an environment matches the data the model saw.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import torch

from tdm_dist.errors import CheckpointError
from tdm_dist.model import TDM, TDMConfig

FORMAT = "tdm_dist/checkpoint/1"
FILENAME = "model.pt"


def save_checkpoint(directory: str | os.PathLike, model: torch.nn.Module, **state) -> Path:
    """Write ``directory/model.pt`` (via a temporary name and a rename) and return its path.

    ``model`` is a TDM or a baseline (``tdm_dist.baselines``); ``model_kind`` says which ("tdm" or the
    baseline's name), ``model_config`` is its config as a dict. ``state`` must be plain data.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "model_kind": getattr(model, "kind", "tdm"),
        "model_config": asdict(model.cfg),
        "model": model.state_dict(),
        **state,
    }
    tmp = directory / f".{FILENAME}.tmp"
    torch.save(payload, tmp)
    os.replace(tmp, directory / FILENAME)
    return directory / FILENAME


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file from a file path, a checkpoint directory, or a run directory (its latest checkpoint)."""
    path = Path(path)
    if path.is_file():
        return path
    if (path / FILENAME).is_file():
        return path / FILENAME
    if path.is_dir():
        found = sorted(path.rglob(FILENAME), key=lambda p: p.stat().st_mtime)
        if found:
            return found[-1]
        raise CheckpointError(f"no checkpoint ({FILENAME}) under {path}")
    raise CheckpointError(f"checkpoint {path} does not exist")


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """The checkpoint's contents; ``CheckpointError`` naming the file if it is not a tdm_dist checkpoint."""
    file = resolve_checkpoint(path)
    try:
        payload = torch.load(file, map_location=map_location, weights_only=True)
    except Exception as e:  # corrupt, truncated, or not a torch file at all
        # Not torch's message: it runs to many lines and advises weights_only=False, which we never do.
        raise CheckpointError(
            f"{file} is not a readable checkpoint (not a torch file, or corrupt: {e.__class__.__name__})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{file} is not a tdm_dist checkpoint (expected format {FORMAT!r})")
    return payload


def model_kind(payload: dict) -> str:
    """The kind of model a checkpoint's contents hold: "tdm" (also for checkpoints from before baselines
    existed) or a baseline's name (``tdm_dist.baselines.NAMES``)."""
    return payload.get("model_kind", "tdm")


def checkpoint_kind(path: str | os.PathLike) -> str:
    """``model_kind`` of the checkpoint at ``path``."""
    return model_kind(load_checkpoint(path))


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> TDM:
    """The trained model of a checkpoint, in eval mode, on ``device``."""
    payload = load_checkpoint(path)
    if model_kind(payload) != "tdm":
        raise CheckpointError(
            f"{resolve_checkpoint(path)} holds the baseline model {payload['model_kind']!r}, not a TDM; "
            "tdm_dist.baselines.load_baseline loads it"
        )
    try:
        model = TDM(TDMConfig(**payload["model_config"]))
        model.load_state_dict(payload["model"])
    except (KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{resolve_checkpoint(path)} does not hold a model this version can build: {e}") from None
    return model.to(device).eval()
