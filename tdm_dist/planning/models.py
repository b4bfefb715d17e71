"""The model interface the planners plan with, and the objectives built on it (paper §4.1, eqs. 5 and 6).

A model answers one question: from what the agent knows now (a :class:`PlanState`), what do K action
sequences lead to? ``imagine(state, actions [K, N, m]) -> Prediction`` with the rewards the objective sums,
[K, N]. Models with a policy also ``propose(state, noise [K, N, m])``: the proposal planner's candidates,
the policy's actions along the imagined trajectory plus the noise (§5.1.1). The TDM (in process here, or
through a ModelServer, ``runtime.model_server``), the ground-truth simulator and the baselines implement it,
so a planner, ``tdm eval`` and the sweeps never know which one they drive.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from tdm_dist import envs
from tdm_dist.errors import ConfigError
from tdm_dist.tokenizer import History

OBJECTIVES = ("auto", "obs", "predicted")


@dataclass
class PlanState:
    """What an agent knows when it plans: its environment and the real interaction so far (ending in o_t, r_t)."""

    env: str
    history: History


@dataclass
class Prediction:
    """A model's answer for K candidates, as numpy arrays for the planners: rewards [K, N] (what the objective
    sums), the actions [K, N, m] they came from, and the predicted observations [K, N, n] where the model has
    them. (``model.transformer.Imagined`` is the TDM's own torch-side result.)"""

    rewards: np.ndarray
    actions: np.ndarray
    obs: np.ndarray | None = None


class DynamicsModel(Protocol):
    def imagine(self, state: PlanState, actions: np.ndarray) -> Prediction: ...

    def propose(self, state: PlanState, noise: np.ndarray) -> Prediction: ...


def reward_function(env: str, objective: str = "auto"):
    """The reward the planner sums for ``env``: ``reward_from_obs`` (eq. 5), or ``None`` for the model's own
    predicted rewards (eq. 6). ``auto`` takes eq. 5 where the task's reward is a function of the observation."""
    if objective not in OBJECTIVES:
        raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if objective == "predicted" or (objective == "auto" and not envs.spec(env).has_reward_from_obs):
        return None
    return envs.reward_fn(env)  # objective "obs" on a task without one: ConfigError saying so


class TDMModel:
    """A TDM in this process as a :class:`DynamicsModel` (the ModelServer runs one of these per batch)."""

    def __init__(self, model, objective: str = "auto", greedy: bool = False, seed: int | None = None):
        self.model, self.objective, self.greedy = model, objective, greedy
        self.generator = seeded_generator(model.device, seed)

    def imagine(self, state: PlanState, actions: np.ndarray) -> Prediction:
        return self._run(state, actions=actions)

    def propose(self, state: PlanState, noise: np.ndarray) -> Prediction:
        return self._run(state, noise=noise)

    def _run(self, state: PlanState, actions=None, noise=None) -> Prediction:
        out = self.model.imagine(
            state.history,
            actions,
            noise=noise,
            reward_fn=reward_function(state.env, self.objective),
            greedy=self.greedy,
            generator=self.generator,
        )
        return Prediction(rewards=numpy64(out.rewards), actions=numpy64(out.actions), obs=numpy64(out.obs))


class GroundTruthModel:
    """The simulator as the model: K rollouts from the environment's current state (paper §5.1's reference).

    ``worker`` is an ``EnvWorker`` holding the agent's environment, or its Ray actor handle; either way its
    state is the agent's current state, and a rollout leaves it unchanged.
    """

    def __init__(self, worker):
        self.worker = worker

    def imagine(self, state: PlanState, actions: np.ndarray) -> Prediction:
        rewards, obs = call(self.worker.rollout, None, actions, observations=True)
        return Prediction(rewards=np.asarray(rewards), actions=np.asarray(actions), obs=np.asarray(obs))

    def propose(self, state: PlanState, noise: np.ndarray) -> Prediction:
        raise ConfigError("the proposal planner needs a model with a policy (the TDM); the ground truth has none")


class ModelObjective:
    """The planner's objective for one decision: the summed rewards a model predicts for each candidate."""

    def __init__(self, model: DynamicsModel, state: PlanState):
        self.model, self.state = model, state

    def __call__(self, actions: np.ndarray) -> np.ndarray:
        return self.model.imagine(self.state, actions).rewards.sum(axis=1)

    def propose(self, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """-> (summed rewards [K], actions [K, N, m]) of the model's proposals with ``noise`` added."""
        out = self.model.propose(self.state, noise)
        return out.rewards.sum(axis=1), out.actions


def call(method, *args, **kwargs):
    """``method(*args, **kwargs)`` of an object in this process, or of a Ray actor (its result, waited for): the
    simulator, an EnvWorker and a ModelServer are either, and the code that uses them need not know which."""
    if hasattr(method, "remote"):
        import ray

        return ray.get(method.remote(*args, **kwargs))
    return method(*args, **kwargs)


def seeded_generator(device, seed: int | None = None) -> torch.Generator:
    """A torch generator on ``device``: seeded for reproducible imagination, else from fresh entropy."""
    generator = torch.Generator(device)
    if seed is not None:
        generator.manual_seed(seed)
    else:
        generator.seed()
    return generator


def numpy64(t: torch.Tensor) -> np.ndarray:
    """A model's torch output as the float64 numpy the planners take."""
    return t.detach().to("cpu", torch.float64).numpy()
