"""The baselines by name, their training data, their checkpoints, and the planner's model interface over them.

``build(name, obs_dim, act_dim)`` makes any baseline of paper §5.1; ``transitions(episodes)`` turns dataset
episodes into the one-step batches they train on; ``save_baseline``/``load_baseline`` write and rebuild
them (the checkpoint format of ``learner.checkpoint``, plus the model's kind); :class:`BaselineModel` plans
with one, like ``planning.models.TDMModel`` plans with the TDM.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from tdm_dist.baselines.mlp import PRESETS, Baseline, MLPConfig, MLPDynamics, preset
from tdm_dist.baselines.pets import PETS, PETSConfig
from tdm_dist.data.dataset import cut_segments
from tdm_dist.errors import CheckpointError, ConfigError, DataError
from tdm_dist.learner.checkpoint import FILENAME, FORMAT, load_checkpoint, resolve_checkpoint
from tdm_dist.planning.models import PlanState, Prediction, numpy64, reward_function, seeded_generator

# name -> (model class, its config class)
MODELS: dict[str, tuple[type[Baseline], type]] = {
    **{name: (MLPDynamics, MLPConfig) for name in PRESETS},
    "pets": (PETS, PETSConfig),
}
NAMES = tuple(MODELS)


def build(name: str, obs_dim: int, act_dim: int) -> Baseline:
    """The named baseline, freshly initialized, for observations of ``obs_dim`` and actions of ``act_dim`` entries."""
    if name not in MODELS:
        raise ConfigError(f"unknown baseline model {name!r}; known: {', '.join(NAMES)}")
    model = PETS(PETSConfig(obs_dim, act_dim)) if name == "pets" else MLPDynamics(preset(name, obs_dim, act_dim))
    model.kind = name
    return model


def transitions(episodes: list[dict]) -> dict[str, np.ndarray]:
    """Episodes (``data.episodes`` layout: observations [T+1, n], actions [T, m], rewards [T+1] with r_{t+1}
    following a_t) -> one row per step: obs [B, n], act [B, m], next_obs [B, n], reward [B], float32."""
    seg = segments(episodes, 1)
    return {"obs": seg["obs"][:, 0], "act": seg["act"][:, 0], "next_obs": seg["obs"][:, 1], "reward": seg["reward"][:, 0]}


def segments(episodes: list[dict], length: int) -> dict[str, np.ndarray]:
    """Episodes -> their consecutive ``length``-step segments (``data.dataset.cut_segments``): obs [S, L+1, n],
    act [S, L, m], reward [S, L], float32; every episode must have the layout of the first."""
    if not episodes:
        raise DataError("segments needs at least one episode")
    parts = []
    for i, ep in enumerate(episodes):
        obs = np.asarray(ep["observations"], dtype=np.float32)
        act = np.asarray(ep["actions"], dtype=np.float32)
        rew = np.asarray(ep["rewards"], dtype=np.float32)
        T = act.shape[0]
        if obs.ndim != 2 or act.ndim != 2 or obs.shape[0] != T + 1 or rew.shape != (T + 1,):
            raise DataError(
                f"episode {i} must have observations [T+1, n], actions [T, m] and rewards [T+1], got "
                f"{tuple(obs.shape)}, {tuple(act.shape)} and {tuple(rew.shape)}"
            )
        if parts and (obs.shape[1], act.shape[1]) != (parts[0]["obs"].shape[2], parts[0]["act"].shape[2]):
            raise DataError(f"episode {i} has obs_dim {obs.shape[1]} and act_dim {act.shape[1]}, unlike episode 0")
        parts.append(cut_segments(obs, act, rew, length))
    return {k: np.concatenate([p[k] for p in parts]) for k in ("obs", "act", "reward")}


def save_baseline(directory: str | os.PathLike, model: Baseline, **state) -> Path:
    """Write ``directory/model.pt`` (via a temporary name and a rename): format, kind, config, weights and
    ``state`` (plain data only, so that ``torch.load(weights_only=True)`` reads it)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "model_kind": model.kind,
        "model_config": asdict(model.cfg),
        "model": model.state_dict(),
        **state,
    }
    tmp = directory / f".{FILENAME}.tmp"
    torch.save(payload, tmp)
    os.replace(tmp, directory / FILENAME)
    return directory / FILENAME


def load_baseline(path: str | os.PathLike, device: str | torch.device = "cpu") -> Baseline:
    """The baseline of a checkpoint (file, checkpoint directory or run directory), in eval mode, on ``device``."""
    payload = load_checkpoint(path)
    kind = payload.get("model_kind")
    if kind not in MODELS:
        raise CheckpointError(
            f"{resolve_checkpoint(path)} holds no baseline model (model_kind {kind!r}; known: {', '.join(NAMES)})"
        )
    model_cls, config_cls = MODELS[kind]
    try:
        model = model_cls(config_cls(**payload["model_config"]))
        model.load_state_dict(payload["model"])
    except (KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(
            f"{resolve_checkpoint(path)} does not hold a {kind} this version can build: {e}"
        ) from None
    model.kind = kind
    return model.to(device).eval()


class BaselineModel:
    """A baseline as the planner's ``DynamicsModel``: every candidate starts from the last real observation.

    The objective is ``planning.models.reward_function``'s: the reward of the predicted observations (eq. 5)
    where the task has one, else the baseline's predicted rewards (eq. 6).
    """

    def __init__(self, model: Baseline, objective: str = "auto", seed: int | None = None):
        self.model, self.objective = model.eval(), objective
        self.generator = seeded_generator(model.device, seed)

    def imagine(self, state: PlanState, actions: np.ndarray) -> Prediction:
        """actions [K, N, m] in [-1, 1] -> rewards [K, N] and predicted observations [K, N, n]."""
        model, device = self.model, self.model.device
        last = torch.as_tensor(state.history.observations[-1], dtype=torch.float32, device=device)
        if last.shape != (model.obs_dim,):
            raise DataError(f"the history's observations have {last.shape[0]} entries, the model takes {model.obs_dim}")
        acts = torch.as_tensor(actions, dtype=torch.float32, device=device)
        obs, rewards = model.rollout(last.expand(acts.shape[0], -1), acts, self.generator)
        fn = reward_function(state.env, self.objective)
        if fn is not None:  # paper eq. 5
            rewards = torch.as_tensor(fn(obs, acts), dtype=torch.float32, device=device)
        return Prediction(rewards=numpy64(rewards), actions=np.asarray(actions), obs=numpy64(obs))

    def propose(self, state: PlanState, noise: np.ndarray) -> Prediction:
        raise ConfigError("the proposal planner needs a model with a policy (the TDM); the baselines have none")
