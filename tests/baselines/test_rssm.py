"""The RSSM baseline: it learns real cartpole dynamics from segments, predicts each reward from the action it
follows, filters the real history, survives a weights-only checkpoint, and is reproducible per seed."""

from __future__ import annotations

import io
from dataclasses import asdict

import numpy as np
import pytest
import torch

from tdm_dist import envs
from tdm_dist.baselines.mlp import num_params
from tdm_dist.baselines.model import segments
from tdm_dist.baselines.rssm import RSSM, RSSMConfig
from tdm_dist.errors import ConfigError, DataError
from tdm_dist.planning.ground_truth import random_policy, run_episode

ENV = "cartpole-swingup"
SMALL = {"deter": 64, "stoch": 8, "classes": 8, "hidden": 64, "segment": 20}  # trains in seconds on one thread


@pytest.fixture(scope="module")
def episode() -> dict[str, torch.Tensor]:
    env = envs.make(ENV, seed=0)
    ep = run_episode(env, random_policy(env.spec, np.random.default_rng(0)), seed=0, steps=200)
    return {k: torch.as_tensor(ep[k]) for k in ("observations", "actions", "rewards")}


@pytest.fixture(scope="module")
def segs(episode) -> dict[str, torch.Tensor]:
    ep = {k: v.numpy() for k, v in episode.items()}
    return {k: torch.as_tensor(v) for k, v in segments([ep], SMALL["segment"]).items()}  # 10 segments of 20 steps


def train(segs: dict[str, torch.Tensor], steps: int) -> tuple[RSSM, list[float]]:
    """A small RSSM overfit to ``segs``: full-batch Adam, seeded."""
    torch.manual_seed(0)
    model = RSSM(RSSMConfig(5, 1, **SMALL))
    model.fit_normalization(segs)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    generator, losses = torch.Generator().manual_seed(0), []
    for _ in range(steps):
        opt.zero_grad()
        loss = model.loss(segs, generator)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model.eval(), losses


@pytest.fixture(scope="module")
def trained(segs) -> tuple[RSSM, list[float]]:
    return train(segs, 400)


def test_default_config_has_a_baseline_size_for_cartpole():
    with torch.device("meta"):  # shapes only
        count = num_params(RSSM(RSSMConfig(5, 1)))
    assert 400_000 <= count <= 1_000_000, count


def test_training_lowers_the_loss_to_near_its_free_nats_floor(trained):
    _, losses = trained
    assert losses[-1] < 0.3 * losses[0], f"loss {losses[0]:.3f} -> {losses[-1]:.3f}"
    assert losses[-1] < 1.1  # KL balancing with free_nats = 1 makes the floor 1.0


def test_filtered_open_loop_predictions_learn_the_dynamics(trained, episode):
    """From a state filtered on the real history, predict the next 10 steps under the real actions."""
    model, _ = trained
    obs, act, rew = episode["observations"], episode["actions"], episode["rewards"]
    K, H, starts = 8, 10, torch.arange(20, 190, 10)
    errors, reward_errors = [], []
    for t in starts.tolist():
        pred, reward = model.rollout(
            obs[t].expand(K, -1),
            act[t : t + H].expand(K, -1, -1),
            torch.Generator().manual_seed(t),
            (obs[: t + 1], act[:t]),
        )
        errors.append(pred - obs[t + 1 : t + H + 1]), reward_errors.append(reward[:, 0] - rew[t + 1])
    rms = torch.stack(errors).pow(2).mean(dim=(0, 1, 3)).sqrt()  # per step ahead: (H,)
    truth = obs[starts[:, None] + torch.arange(1, H + 1)]  # (starts, H, n)
    no_change = (obs[starts, None] - truth).pow(2).mean(dim=(0, 2)).sqrt()
    mean = (obs.mean(dim=0) - truth).pow(2).mean(dim=(0, 2)).sqrt()
    # One step ahead the decoder's precision dominates (unit-variance Gaussian); over 10 steps the dynamics do.
    assert rms[0] < 0.25 * mean[0], f"1 step: RMS {rms[0]:.4g}, predicting the mean {mean[0]:.4g}"
    assert rms[-1] < 0.7 * no_change[-1], f"10 steps: RMS {rms[-1]:.4g}, predicting no change {no_change[-1]:.4g}"
    reward_rms = torch.stack(reward_errors).pow(2).mean().sqrt()
    assert reward_rms < 0.35 * rew.std(), f"reward RMS {reward_rms:.4g}, std {rew.std():.4g}"


def test_each_reward_is_predicted_by_the_state_after_the_action_it_follows(segs, episode):
    # With r_{t+1} := a_t the reward is only predictable by a state that has seen a_t.
    model, _ = train({**segs, "reward": segs["act"][..., 0].clone()}, 100)
    obs, act = episode["observations"], episode["actions"]
    actions = torch.linspace(-1, 1, 9)[:, None, None].expand(9, 3, 1)
    _, reward = model.rollout(obs[100].expand(9, -1), actions, torch.Generator().manual_seed(0), (obs[:101], act[:100]))
    assert (reward - actions[..., 0]).pow(2).mean().sqrt() < 0.2, reward


def test_rollout_shapes_with_no_short_and_long_histories(trained, episode):
    model, _ = trained
    obs, act = episode["observations"], episode["actions"]
    actions = torch.zeros(4, 7, 1).uniform_(-1, 1, generator=torch.Generator().manual_seed(0))
    histories = {
        "none": None,
        "T=0": (obs[:1], act[:0]),
        "long": (obs[:151], act[:150]),
        "numpy": (obs[:31].numpy(), act[:30].numpy()),
    }
    for name, history in histories.items():
        start = obs[0] if history is None or len(history[1]) == 0 else torch.as_tensor(history[0][-1])
        pred, reward = model.rollout(start.expand(4, -1), actions, torch.Generator().manual_seed(0), history)
        assert pred.shape == (4, 7, 5) and reward.shape == (4, 7), name
        assert torch.isfinite(pred).all() and torch.isfinite(reward).all(), name
    # Without a history each candidate filters its own observation.
    pred, _ = model.rollout(obs[:4], actions, torch.Generator().manual_seed(0))
    assert pred.shape == (4, 7, 5)


def test_rollout_filters_only_the_last_segment_of_the_history(trained, episode):
    model, _ = trained
    obs, act = episode["observations"], episode["actions"]
    actions = torch.zeros(3, 5, 1).uniform_(-1, 1, generator=torch.Generator().manual_seed(0))
    full = model.rollout(obs[150].expand(3, -1), actions, torch.Generator().manual_seed(4), (obs[:151], act[:150]))
    last = model.rollout(
        obs[150].expand(3, -1), actions, torch.Generator().manual_seed(4), (obs[130:151], act[130:150])
    )
    for x, y in zip(full, last, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_bad_shapes_raise_data_errors(trained, episode, segs):
    model, _ = trained
    obs, act = episode["observations"], episode["actions"]
    obs0, actions = obs[10].expand(2, -1), torch.zeros(2, 3, 1)
    with pytest.raises(DataError, match="obs0"):
        model.rollout(obs0[:, :4], actions)
    with pytest.raises(DataError, match="actions"):
        model.rollout(obs0, torch.zeros(2, 3, 2))
    with pytest.raises(DataError, match="N >= 1"):
        model.rollout(obs0, torch.zeros(2, 0, 1))
    with pytest.raises(DataError, match="actions"):
        model.rollout(obs0, torch.zeros(3, 3, 1))
    with pytest.raises(DataError, match="history needs"):
        model.rollout(obs0, actions, history=(obs[:11], act[:9]))
    with pytest.raises(DataError, match="end in the current observation"):
        model.rollout(obs0, actions, history=(obs[:12], act[:11]))
    with pytest.raises(DataError, match=r"got \(10, 21, 5\), \(10, 20, 1\) and \(10, 19\)"):
        model.loss({**segs, "reward": segs["reward"][:, 1:]})
    with pytest.raises(DataError, match="segments"):
        model.fit_normalization({**segs, "obs": segs["obs"][:, :-1]})
    with pytest.raises(NotImplementedError, match="rollout"):
        model.step(obs0, actions[:, 0])


def test_weights_only_checkpoint_round_trip_gives_the_same_rollouts(trained, episode):
    model, _ = trained
    buffer = io.BytesIO()
    torch.save({"model_config": asdict(model.cfg), "model": model.state_dict()}, buffer)
    buffer.seek(0)
    payload = torch.load(buffer, weights_only=True)  # plain data only
    loaded = RSSM(RSSMConfig(**payload["model_config"]))
    loaded.load_state_dict(payload["model"])
    torch.testing.assert_close(loaded.state_dict(), model.state_dict(), rtol=0, atol=0)  # with the statistics
    obs, act = episode["observations"], episode["actions"]
    actions = act[40:46].expand(4, -1, -1)
    history = (obs[:41], act[:40])
    before = model.rollout(obs[40].expand(4, -1), actions, torch.Generator().manual_seed(2), history)
    after = loaded.eval().rollout(obs[40].expand(4, -1), actions, torch.Generator().manual_seed(2), history)
    for x, y in zip(before, after, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_rollouts_and_losses_are_reproducible_per_seed_and_differ_across_seeds(trained, episode, segs):
    model, _ = trained
    obs, act = episode["observations"], episode["actions"]
    actions, history = act[60:70].expand(16, -1, -1), (obs[:61], act[:60])

    def rollout(seed):
        return model.rollout(obs[60].expand(16, -1), actions, torch.Generator().manual_seed(seed), history)

    (obs_a, rew_a), (obs_b, rew_b), (obs_c, rew_c) = rollout(0), rollout(0), rollout(1)
    torch.testing.assert_close(obs_a, obs_b, rtol=0, atol=0)
    torch.testing.assert_close(rew_a, rew_b, rtol=0, atol=0)
    assert not torch.equal(obs_a, obs_c) and not torch.equal(rew_a, rew_c)
    assert not torch.equal(obs_a[0], obs_a[1])  # the prior's samples differ across candidates

    def loss(seed):
        return model.loss(segs, torch.Generator().manual_seed(seed))

    assert loss(0).item() == loss(0).item() != loss(1).item()


@pytest.mark.parametrize(
    "field, value",
    [
        ("obs_dim", 0),
        ("act_dim", 0),
        ("deter", 0),
        ("stoch", 0),
        ("classes", 1),
        ("hidden", 0),
        ("layers", 0),
        ("segment", 0),
        ("kl_scale", -0.1),
        ("kl_balance", 1.5),
        ("kl_balance", float("nan")),
        ("free_nats", -1.0),
    ],
)
def test_bad_config_values_name_the_field(field, value):
    kwargs = {"obs_dim": 5, "act_dim": 1, field: value}
    with pytest.raises(ConfigError, match=rf"RSSMConfig\.{field} must be .*, got {value}"):
        RSSMConfig(**kwargs)
