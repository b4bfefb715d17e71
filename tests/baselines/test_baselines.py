"""The baselines: each variant learns real cartpole dynamics, has the paper's size, survives a checkpoint, and
plans through the model interface."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tdm_dist import envs
from tdm_dist.baselines import NAMES, BaselineModel, build, load_baseline, num_params, transitions
from tdm_dist.errors import CheckpointError, ConfigError
from tdm_dist.learner.checkpoint import FORMAT, save_checkpoint
from tdm_dist.planning.ground_truth import random_policy, run_episode
from tdm_dist.planning.models import PlanState
from tdm_dist.tokenizer import History

ENV = "cartpole-swingup"
# The one-step models; the 70M one is only counted, the RSSM (sequences) has tests of its own (test_rssm.py).
TRAINED = [name for name in NAMES if name not in ("mlp-tokin-delta-70m", "rssm")]


@pytest.fixture(scope="module")
def episode() -> dict:
    env = envs.make(ENV, seed=0)
    return run_episode(env, random_policy(env.spec, np.random.default_rng(0)), seed=0, steps=200)


@pytest.fixture(scope="module")
def batch(episode) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v) for k, v in transitions([episode]).items()}


@pytest.fixture(scope="module")
def trained(batch) -> dict:
    """Every variant overfit to the episode's 200 transitions: 300 full-batch Adam steps."""
    models = {}
    for name in TRAINED:
        torch.manual_seed(0)
        model = build(name, 5, 1)
        model.fit_normalization(batch)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        generator = torch.Generator().manual_seed(0)  # PETS's bootstraps
        for _ in range(300):
            opt.zero_grad()
            loss = model.loss(batch, generator)
            loss.backward()
            opt.step()
        models[name] = model.eval()
    return models


def test_transitions_pair_each_action_with_the_next_observation_and_its_reward(episode):
    t = transitions([episode, episode])
    assert t["obs"].shape == (400, 5) and t["act"].shape == (400, 1) and t["reward"].shape == (400,)
    np.testing.assert_array_equal(t["next_obs"][:199], t["obs"][1:200])
    np.testing.assert_array_equal(t["next_obs"][199], episode["observations"][200])
    np.testing.assert_array_equal(t["reward"][:200], episode["rewards"][1:])  # rewards[0] = 0 came with o_0
    np.testing.assert_array_equal(t["act"][:200], episode["actions"])


@pytest.mark.parametrize("name", TRAINED)
def test_each_variant_learns_the_dynamics_far_better_than_predicting_no_change(name, trained, batch):
    next_obs, reward = trained[name].step(batch["obs"], batch["act"], torch.Generator().manual_seed(1))
    error = (next_obs - batch["next_obs"]).pow(2).mean().sqrt()
    no_change = (batch["obs"] - batch["next_obs"]).pow(2).mean().sqrt()
    assert error < 0.3 * no_change, f"{name}: RMS error {error:.4g}, predicting no change {no_change:.4g}"
    reward_error = (reward - batch["reward"]).pow(2).mean().sqrt()
    assert reward_error < 0.3 * batch["reward"].std(), f"{name}: reward RMS error {reward_error:.4g}"


def test_parameter_counts_match_the_paper_for_cartpole():
    with torch.device("meta"):  # shapes only
        counts = {name: num_params(build(name, 5, 1)) for name in NAMES}
    for name, count in counts.items():
        if name.startswith("mlp") and name != "mlp-tokin-delta-70m":
            assert 300_000 <= count <= 500_000, f"{name} has {count} parameters, the paper's have ca. 400k"
    assert 59_500_000 <= counts["mlp-tokin-delta-70m"] <= 80_500_000, counts["mlp-tokin-delta-70m"]


@pytest.mark.parametrize("name", TRAINED)
def test_checkpoint_round_trip_rebuilds_the_same_model(name, trained, batch, tmp_path):
    path = save_checkpoint(tmp_path, trained[name], step=300)
    payload = torch.load(path, weights_only=True)  # plain data only
    assert payload["format"] == FORMAT and payload["model_kind"] == name and payload["step"] == 300
    loaded = load_baseline(tmp_path)
    assert loaded.kind == name and type(loaded) is type(trained[name])
    torch.testing.assert_close(loaded.state_dict(), trained[name].state_dict(), rtol=0, atol=0)  # with the statistics
    actions = batch["act"][:8, None].expand(8, 4, 1)
    before = trained[name].rollout(batch["obs"][:8], actions, torch.Generator().manual_seed(2))
    after = loaded.rollout(batch["obs"][:8], actions, torch.Generator().manual_seed(2))
    for x, y in zip(before, after, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def real_history(steps: int = 6) -> History:
    env, rng = envs.make(ENV, seed=1), np.random.default_rng(1)
    obs, rew, act = [env.reset(1)], [0.0], []
    for _ in range(steps - 1):
        a = rng.uniform(-1, 1, 1)
        o, r, _ = env.step(a)
        obs.append(o), rew.append(r), act.append(a)
    return History(np.array(obs, np.float32), np.array(rew, np.float32), np.array(act, np.float32))


@pytest.mark.parametrize("name", ["mlp-tokin-delta", "pets"])
def test_baseline_model_plans_from_the_last_real_observation(name, trained):
    history = real_history()
    state = PlanState(ENV, history)
    actions = np.random.default_rng(0).uniform(-1, 1, (4, 3, 1))
    out = BaselineModel(trained[name], seed=0).imagine(state, actions)
    assert out.rewards.shape == (4, 3) and out.obs.shape == (4, 3, 5) and out.actions.shape == (4, 3, 1)
    np.testing.assert_allclose(out.rewards, envs.reward_fn(ENV)(out.obs, actions), atol=1e-5)  # eq. 5
    predicted = BaselineModel(trained[name], objective="predicted", seed=0).imagine(state, actions)
    obs0 = torch.as_tensor(history.observations[-1:]).expand(4, -1)
    expected = trained[name].rollout(
        obs0, torch.as_tensor(actions, dtype=torch.float32), torch.Generator().manual_seed(0)
    )
    np.testing.assert_allclose(predicted.obs, expected[0].numpy(), atol=1e-6)  # same start, same seed
    np.testing.assert_allclose(predicted.rewards, expected[1].numpy(), atol=1e-6)  # eq. 6
    with pytest.raises(ConfigError, match="policy"):
        BaselineModel(trained[name]).propose(state, np.zeros((4, 3, 1)))


def test_pets_rollouts_are_reproducible_per_seed_and_differ_across_seeds(trained, batch):
    pets = trained["pets"]
    obs0, actions = batch["obs"][:16], batch["act"][:16, None].expand(16, 10, 1)

    def rollout(seed):
        return pets.rollout(obs0, actions, torch.Generator().manual_seed(seed))

    (obs_a, rew_a), (obs_b, rew_b), (obs_c, _) = rollout(0), rollout(0), rollout(1)
    assert obs_a.shape == (16, 10, 5) and rew_a.shape == (16, 10)
    torch.testing.assert_close(obs_a, obs_b, rtol=0, atol=0)
    torch.testing.assert_close(rew_a, rew_b, rtol=0, atol=0)
    assert not torch.equal(obs_a, obs_c)


def test_unknown_model_names_the_known_ones():
    with pytest.raises(ConfigError, match="bogus") as info:
        build("bogus", 5, 1)
    for name in NAMES:
        assert name in str(info.value)


def test_a_baseline_checkpoint_is_not_taken_for_a_tdm(tmp_path):
    from tdm_dist.learner.checkpoint import load_model

    save_checkpoint(tmp_path, build("mlp", 5, 1))
    with pytest.raises(CheckpointError, match="holds the baseline model 'mlp', not a TDM"):
        load_model(tmp_path)


def test_the_70m_mlp_fits_a_small_slice_round_trips_and_plans(batch, tmp_path):
    """The paper's large baseline: 70M parameters are slow to train here, so 32 transitions and 40 steps."""
    torch.manual_seed(0)
    model = build("mlp-tokin-delta-70m", 5, 1)
    part = {k: v[:32] for k, v in batch.items()}
    model.fit_normalization(part)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = model.loss(part)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], f"loss {losses[0]:.4g} -> {losses[-1]:.4g}"
    del opt
    model.eval()
    save_checkpoint(tmp_path, model)
    assert torch.load(tmp_path / "model.pt", weights_only=True)["model_kind"] == "mlp-tokin-delta-70m"
    loaded = load_baseline(tmp_path)
    actions = part["act"][:4, None].expand(4, 3, 1)
    for x, y in zip(model.rollout(part["obs"][:4], actions), loaded.rollout(part["obs"][:4], actions), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    out = BaselineModel(loaded, seed=0).imagine(PlanState(ENV, real_history()), np.zeros((4, 3, 1)))
    assert out.rewards.shape == (4, 3) and out.obs.shape == (4, 3, 5) and np.all(np.isfinite(out.obs))
