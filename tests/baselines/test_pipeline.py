"""The baselines through the TDM's own pipeline: Ray Train learner, checkpoints, ModelServer, ``evaluate``, sweeps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tdm_dist.baselines import build, load_baseline
from tdm_dist.baselines.model import imagine_many
from tdm_dist.data import EpisodeWriter
from tdm_dist.data.dataset import in_memory_segments
from tdm_dist.errors import ConfigError
from tdm_dist.learner import TrainConfig, load_checkpoint, train
from tdm_dist.planning.models import PlanState
from tdm_dist.planning.optimizers import PlannerConfig
from tdm_dist.runtime.evaluate import EvalConfig, evaluate
from tdm_dist.sweep import SweepConfig
from tdm_dist.tokenizer import History
from tests.data.conftest import synthetic_episode
from tests.runtime.test_evaluate import check_exact

ENV = "cartpole-swingup"


@pytest.fixture(scope="module")
def episodes(tmp_path_factory):
    """Twelve short synthetic cartpole-swingup episodes with the real spec."""
    root = tmp_path_factory.mktemp("baseline-data")
    with EpisodeWriter(root, rows_per_file=4) as w:
        w.write(synthetic_episode(ENV, i, steps=60) for i in range(12))
    return root


def config(data, out, model: str, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), model=model, steps=12, batch_size=32, eval_every=6, val_fraction=0.2,
                warmup_steps=2, val_batches=2)  # fmt: skip
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def mlp_run(episodes, tmp_path_factory, ray_session) -> dict:
    """mlp-tokin-delta (the paper's best baseline) trained by two Ray Train workers."""
    return train(config(episodes, tmp_path_factory.mktemp("mlp-run"), "mlp-tokin-delta", workers=2))


def test_a_baseline_trains_on_ray_train_into_a_checkpoint_of_the_same_format(mlp_run, episodes):
    assert mlp_run["step"] == 12 and np.isfinite(mlp_run["val/loss"]) and "val/unigram_nll" not in mlp_run
    payload = torch.load(mlp_run["checkpoint"], weights_only=True)  # plain data only
    assert payload["model_kind"] == "mlp-tokin-delta" and payload["step"] == 12
    assert payload["env_specs"][ENV]["act_dim"] == 1 and payload["train_config"]["model"] == "mlp-tokin-delta"
    model = load_baseline(mlp_run["checkpoint"])
    # The normalization statistics are those of the training episodes, fitted before the first step and kept.
    fresh = build("mlp-tokin-delta", 5, 1)
    segments = in_memory_segments(episodes, 1, val_fraction=0.2, seed=0, split="train")
    fresh.fit_normalization(fresh.batch({k: torch.as_tensor(v) for k, v in segments.items()}))
    for name in ("in_mean", "in_std", "out_mean", "out_std"):
        torch.testing.assert_close(getattr(model, name), getattr(fresh, name))
    assert len(segments["obs"]) == 10 * 60  # the 10 training episodes' steps (2 of 12 held out)


def test_a_baseline_plans_through_a_model_server(mlp_run, ray_session):
    cfg = EvalConfig(
        env=ENV,
        model="mlp-tokin-delta",
        checkpoint=mlp_run["checkpoint"],
        planner=PlannerConfig(samples=8, horizon=4),
        episodes=2,
        agents=2,
        steps=10,
    )
    result = evaluate(cfg, progress=False)
    check_exact(result, 2)
    assert result["model"] == "mlp-tokin-delta" and all(e["plan_s"] > 0 for e in result["episodes"])
    assert all(0 <= r <= 10 for r in result["returns"])  # cartpole: a reward in [0, 1] per step


def test_pets_trains_and_resumes_in_its_run_directory(episodes, tmp_path, ray_session):
    cfg = config(episodes, tmp_path / "pets", "pets", workers=1)
    first = load_checkpoint(train(cfg)["checkpoint"])
    cfg.steps = 18  # the same --out with more steps continues from step 12
    second = load_checkpoint(train(cfg)["checkpoint"])
    assert (first["step"], second["step"]) == (12, 18) and second["model_kind"] == "pets"
    with pytest.raises(ConfigError, match="holds a run of a pets model, not a mlp"):  # another model: a new --out
        train(config(episodes, tmp_path / "pets", "mlp", workers=1))
    # Fine-tuning starts from the weights and the normalization of the pretrained baseline.
    tuned = train(config(episodes, tmp_path / "tuned", "pets", workers=1, steps=6, init_from=str(tmp_path / "pets")))
    tuned = load_checkpoint(tuned["checkpoint"])
    assert tuned["step"] == 6 and torch.equal(tuned["model"]["out_std"], second["model"]["out_std"])
    with pytest.raises(ConfigError, match="holds a pets model, not a mlp"):
        train(config(episodes, tmp_path / "other", "mlp", workers=1, init_from=str(tmp_path / "pets")))


def test_a_baseline_refuses_a_dataset_of_several_environments(tmp_path):
    with EpisodeWriter(tmp_path / "two") as w:
        w.write(synthetic_episode(env, i, steps=20) for env in (ENV, "pendulum-swingup") for i in range(2))
    with pytest.raises(ConfigError, match=r"the mlp baseline models one environment.*holds 2.*only the TDM"):
        train(config(tmp_path / "two", tmp_path / "run", "mlp"))
    with pytest.raises(ConfigError, match="unknown model 'mpl'; known: tdm, mlp,"):
        config(tmp_path / "two", tmp_path / "run", "mpl").check()


def test_evaluation_settings_a_baseline_cannot_take_are_refused(mlp_run, checkpoint):
    ckpt = mlp_run["checkpoint"]
    planner = PlannerConfig(samples=8, horizon=4)
    with pytest.raises(ConfigError, match="holds a mlp-tokin-delta model, not a tdm"):
        EvalConfig(env=ENV, model="tdm", checkpoint=ckpt, planner=planner).check()
    with pytest.raises(ConfigError, match="holds a tdm model, not a pets"):
        EvalConfig(env=ENV, model="pets", checkpoint=checkpoint, planner=planner).check()
    with pytest.raises(ConfigError, match="proposal policy needs the TDM, not mlp-tokin-delta"):
        EvalConfig(env=ENV, model="mlp-tokin-delta", checkpoint=ckpt, planner=planner.replace(kind="proposal")).check()
    with pytest.raises(ConfigError, match="--prompt is for the TDM"):
        EvalConfig(env=ENV, model="mlp-tokin-delta", checkpoint=ckpt, planner=planner, prompt="data").check()
    with pytest.raises(ConfigError, match="walker-walk has 24 observation and 6 action entries"):
        EvalConfig(env="walker-walk", model="mlp-tokin-delta", checkpoint=ckpt, planner=planner).check()
    # A sweep's line takes the kind of model its checkpoint holds.
    sweep = SweepConfig(base=EvalConfig(env=ENV, planner=planner), models={"best mlp": ckpt, "tdm": checkpoint})
    assert sweep.evaluation("best mlp", 8, 4).model == "mlp-tokin-delta"
    assert sweep.evaluation("tdm", 8, 4).model == "tdm"


def test_a_server_batch_of_one_step_models_is_one_rollout_with_each_answer_unchanged():
    torch.manual_seed(0)
    model = build("mlp-delta", 5, 1).eval()
    rng = np.random.default_rng(0)

    def question(K: int, N: int):
        history = History(rng.normal(size=(3, 5)), np.zeros(3), rng.uniform(-1, 1, (2, 1)))
        return PlanState(ENV, history), rng.uniform(-1, 1, (K, N, 1)), "predicted"

    questions = [question(4, 3), question(2, 3), question(3, 5)]  # two horizons: two rollouts
    together = imagine_many(model, questions)
    for q, answer in zip(questions, together, strict=True):
        (alone,) = imagine_many(model, [q])
        assert answer.rewards.shape == q[1].shape[:2] and answer.obs.shape == (*q[1].shape[:2], 5)
        np.testing.assert_allclose(answer.rewards, alone.rewards, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(answer.obs, alone.obs, rtol=1e-5, atol=1e-6)
    # The first candidate starts from its own question's last real observation.
    first_step = model.rollout(torch.tensor(questions[1][0].history.observations[-1:], dtype=torch.float32),
                               torch.tensor(questions[1][1][:1], dtype=torch.float32))[0][0, 0]  # fmt: skip
    np.testing.assert_allclose(together[1].obs[0, 0], first_step.numpy(), rtol=1e-5, atol=1e-6)


def test_the_rssm_trains_on_sequences_and_plans_from_the_real_history(episodes, tmp_path, ray_session):
    run = train(config(episodes, tmp_path / "rssm", "rssm", workers=2, steps=4, batch_size=4, eval_every=4))
    payload = load_checkpoint(run["checkpoint"])
    assert payload["model_kind"] == "rssm" and payload["model_config"]["segment"] == 50 and np.isfinite(run["val/loss"])
    cfg = EvalConfig(
        env=ENV, model="rssm", checkpoint=run["checkpoint"], planner=PlannerConfig(samples=4, horizon=3), episodes=1,
        agents=1, steps=6,
    )  # fmt: skip
    check_exact(evaluate(cfg, progress=False), 1)
