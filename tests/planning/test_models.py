"""The model interface: the TDM in process, the ground truth, objectives, and the proposal planner."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tdm_dist import envs
from tdm_dist.envs.rollout import rollout
from tdm_dist.errors import ConfigError
from tdm_dist.model import TDM, preset
from tdm_dist.planning.models import GroundTruthModel, ModelObjective, PlanState, TDMModel, reward_function
from tdm_dist.planning.optimizers import MPCPlanner, PlannerConfig, Proposal
from tdm_dist.runtime.env_worker import EnvWorker
from tdm_dist.tokenizer import History

ENV = "cartpole-swingup"


def real_history(steps: int = 6, seed: int = 0) -> History:
    env, rng = envs.make(ENV, seed=seed), np.random.default_rng(seed)
    obs, rew, act = [env.reset(seed)], [0.0], []
    for _ in range(steps - 1):
        a = rng.uniform(-1, 1, 1)
        o, r, _ = env.step(a)
        obs.append(o), rew.append(r), act.append(a)
    return History(np.array(obs, np.float32), np.array(rew, np.float32), np.array(act, np.float32))


@pytest.fixture(scope="module")
def tdm():
    torch.manual_seed(0)
    return TDM(preset("tiny", context=128)).eval()


def test_objectives_pick_eq5_where_the_reward_is_a_function_of_the_observation():
    assert reward_function(ENV, "auto") is not None  # cartpole: reward from obs (eq. 5)
    assert reward_function(ENV, "predicted") is None  # eq. 6
    assert reward_function("ball_in_cup-catch", "auto") is None  # no reward_from_obs: predicted rewards
    with pytest.raises(ConfigError, match="no reward_from_obs"):
        reward_function("ball_in_cup-catch", "obs")
    with pytest.raises(ConfigError, match="objective must be one of"):
        reward_function(ENV, "return")


def test_tdm_model_scores_each_candidate_with_the_reward_of_its_predicted_observations(tdm):
    model = TDMModel(tdm, greedy=True)
    actions = np.random.default_rng(0).uniform(-1, 1, (6, 4, 1))
    out = model.imagine(PlanState(ENV, real_history()), actions)
    assert out.rewards.shape == (6, 4) and out.obs.shape == (6, 4, 5)
    np.testing.assert_allclose(out.actions, actions)
    expected = envs.reward_fn(ENV)(out.obs, actions)  # eq. 5 on the predicted observations
    np.testing.assert_allclose(out.rewards, expected, atol=2e-3)  # rewards pass through their tokens
    values = ModelObjective(model, PlanState(ENV, real_history()))(actions)
    np.testing.assert_allclose(values, out.rewards.sum(axis=1), atol=1e-6)


def test_predicted_objective_decodes_rewards(tdm):
    actions = np.zeros((3, 2, 1))
    out = TDMModel(tdm, objective="predicted", greedy=True).imagine(PlanState(ENV, real_history()), actions)
    from_obs = envs.reward_fn(ENV)(out.obs, actions)
    assert out.rewards.shape == (3, 2) and not np.allclose(out.rewards, from_obs, atol=1e-3)


def test_ground_truth_model_is_the_simulator_from_the_workers_state():
    worker = EnvWorker(ENV, seed=0)
    worker.reset(3)
    for a in (0.5, -0.2):
        worker.step(np.array([a]))
    actions = np.random.default_rng(1).uniform(-1, 1, (4, 5, 1))
    state = worker.get_state()
    out = GroundTruthModel(worker).imagine(PlanState(ENV, real_history()), actions)
    expected = rollout(worker.env, actions)
    np.testing.assert_allclose(out.rewards, expected)
    np.testing.assert_array_equal(worker.get_state(), state)  # planning leaves the real env where it was
    with pytest.raises(ConfigError, match="needs a model with a policy"):
        GroundTruthModel(worker).propose(PlanState(ENV, real_history()), np.zeros((2, 3, 1)))


def test_proposal_planner_returns_the_best_proposal(tdm):
    cfg = PlannerConfig(kind="proposal", samples=8, horizon=3, sigma=0.5, seed=0)
    model = TDMModel(tdm, greedy=True, seed=0)
    state = PlanState(ENV, real_history())
    seen = {}

    class Recording(ModelObjective):
        def propose(self, noise):
            seen["noise"] = noise
            seen["values"], seen["actions"] = super().propose(noise)
            return seen["values"], seen["actions"]

    best = Proposal(cfg, 1, np.random.default_rng(0)).optimize(Recording(model, state))
    assert seen["noise"].shape == (8, 3, 1) and 0.2 < seen["noise"].std() < 1.0  # Brownian, std ~ sigma
    np.testing.assert_array_equal(best, seen["actions"][np.argmax(seen["values"])])
    # Through the MPC layer: the first action of that plan, inside the box.
    action = MPCPlanner(cfg, 1).plan(ModelObjective(model, state))
    assert action.shape == (1,) and abs(action[0]) <= 1


def test_proposal_planner_needs_an_objective_with_a_policy():
    cfg = PlannerConfig(kind="proposal", samples=4, horizon=2)
    with pytest.raises(ConfigError, match="policy"):
        Proposal(cfg, 1, np.random.default_rng(0)).optimize(lambda actions: np.zeros(len(actions)))
    with pytest.raises(ConfigError, match="sigma"):
        PlannerConfig(kind="proposal", sigma=-0.1)
    with pytest.raises(ConfigError, match="planner kind must be one of shooting, cem, proposal"):
        PlannerConfig(kind="mppi")
