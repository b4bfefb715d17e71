"""The baselines by name, their training data, their checkpoints, and the planner's model interface over them.

``build(name, obs_dim, act_dim)`` makes any baseline of paper §5.1; ``segments(episodes, L)`` and
``transitions(episodes)`` turn dataset episodes into the batches they train on; ``load_baseline`` rebuilds
one from a checkpoint (``learner.checkpoint.save_checkpoint`` writes the TDM's and theirs alike);
:class:`BaselineModel` plans with one, like ``planning.models.TDMModel`` plans with the TDM.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from tdm_dist.baselines.mlp import PRESETS, Baseline, MLPConfig, MLPDynamics, preset
from tdm_dist.baselines.pets import PETS, PETSConfig
from tdm_dist.baselines.rssm import RSSM, RSSMConfig
from tdm_dist.data.dataset import cut_segments
from tdm_dist.errors import CheckpointError, ConfigError, DataError
from tdm_dist.learner.checkpoint import load_checkpoint, resolve_checkpoint
from tdm_dist.planning.models import PlanState, Prediction, numpy64, reward_function, seeded_generator

# name -> (model class, its config class)
MODELS: dict[str, tuple[type[Baseline], type]] = {
    **{name: (MLPDynamics, MLPConfig) for name in PRESETS},
    "pets": (PETS, PETSConfig),
    "rssm": (RSSM, RSSMConfig),
}
NAMES = tuple(MODELS)


def build(name: str, obs_dim: int, act_dim: int) -> Baseline:
    """The named baseline, freshly initialized, for observations of ``obs_dim`` and actions of ``act_dim`` entries."""
    if name not in MODELS:
        raise ConfigError(f"unknown baseline model {name!r}; known: {', '.join(NAMES)}")
    model_cls, config_cls = MODELS[name]
    model = model_cls(preset(name, obs_dim, act_dim) if model_cls is MLPDynamics else config_cls(obs_dim, act_dim))
    model.kind = name
    return model


def transitions(episodes: list[dict]) -> dict[str, np.ndarray]:
    """Episodes (``data.episodes`` layout: observations [T+1, n], actions [T, m], rewards [T+1] with r_{t+1}
    following a_t) -> one row per step: obs [B, n], act [B, m], next_obs [B, n], reward [B], float32."""
    seg = segments(episodes, 1)
    return {
        "obs": seg["obs"][:, 0],
        "act": seg["act"][:, 0],
        "next_obs": seg["obs"][:, 1],
        "reward": seg["reward"][:, 0],
    }


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


def rebuild(kind: str, config: dict) -> Baseline:
    """The baseline ``kind`` of a stored config (``dataclasses.asdict`` of its config), freshly initialized."""
    if kind not in MODELS:
        raise ConfigError(f"unknown baseline model {kind!r}; known: {', '.join(NAMES)}")
    model_cls, config_cls = MODELS[kind]
    model = model_cls(config_cls(**config))
    model.kind = kind
    return model


def load_baseline(path: str | os.PathLike, device: str | torch.device = "cpu") -> Baseline:
    """The baseline of a checkpoint (file, checkpoint directory or run directory), in eval mode, on ``device``.

    Checkpoints are ``learner.checkpoint.save_checkpoint``'s, the same format as the TDM's."""
    payload = load_checkpoint(path)
    kind = payload.get("model_kind")
    if kind not in MODELS:
        raise CheckpointError(
            f"{resolve_checkpoint(path)} holds no baseline model (model_kind {kind!r}; known: {', '.join(NAMES)})"
        )
    try:
        model = rebuild(kind, payload["model_config"])
        model.load_state_dict(payload["model"])
    except (KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(
            f"{resolve_checkpoint(path)} does not hold a {kind} this version can build: {e}"
        ) from None
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
        return imagine_many(self.model, [(state, actions, self.objective)], self.generator)[0]

    def propose(self, state: PlanState, noise: np.ndarray) -> Prediction:
        raise ConfigError("the proposal planner needs a model with a policy (the TDM); the baselines have none")


def imagine_many(
    model: Baseline, questions: list[tuple[PlanState, np.ndarray, str]], generator: torch.Generator | None = None
) -> list[Prediction]:
    """``imagine`` for many planners at once: (state, actions [K_i, N_i, m], objective) -> one Prediction each.

    A one-step model starts each candidate from its own observation, so the questions of one horizon are one
    rollout of K_1 + K_2 + ... candidates (what a ModelServer's batch is for); a model with a recurrent
    state (``uses_history``) filters each question's own history and rolls out each question alone.
    """
    device, n = model.device, model.obs_dim
    groups: dict[object, list[int]] = {}
    for i, (state, actions, _) in enumerate(questions):
        if np.shape(state.history.observations)[-1] != n:
            raise DataError(f"the history's observations have {np.shape(state.history.observations)[-1]} entries, "
                            f"the model takes {n}")  # fmt: skip
        groups.setdefault(i if model.uses_history else np.shape(actions)[1], []).append(i)
    results: list = [None] * len(questions)
    for members in groups.values():

        def tensor(x) -> torch.Tensor:
            return torch.tensor(np.asarray(x), dtype=torch.float32, device=device)  # a copy: Ray hands read-only arrays

        acts = [tensor(questions[i][1]) for i in members]
        last = [tensor(questions[i][0].history.observations[-1]) for i in members]
        obs0 = [o.expand(a.shape[0], -1) for o, a in zip(last, acts, strict=True)]
        history = None
        if model.uses_history:  # a group of one
            h = questions[members[0]][0].history
            history = (tensor(h.observations), tensor(h.actions))
        obs, rewards = model.rollout(torch.cat(obs0), torch.cat(acts), generator, history)
        first = 0
        for i, a in zip(members, acts, strict=True):
            state, actions, objective = questions[i]
            o, r = obs[first : first + a.shape[0]], rewards[first : first + a.shape[0]]
            first += a.shape[0]
            fn = reward_function(state.env, objective)
            if fn is not None:  # paper eq. 5
                r = torch.as_tensor(fn(o, a), dtype=torch.float32, device=device)
            results[i] = Prediction(rewards=numpy64(r), actions=np.asarray(actions), obs=numpy64(o))
    return results
