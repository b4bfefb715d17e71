"""The TDM: training loss, KV-cache imagination against the naive decoder, the BC view, presets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tdm_dist.errors import ConfigError
from tdm_dist.model import TDM, preset
from tdm_dist.model.transformer import INIT_STD, PRESETS
from tdm_dist.tokenizer import NUM_BINS, PAD, SEPARATOR, History, StepLayout, decode_actions, tokenize


def make_model(context: int = 1023, seed: int = 0) -> TDM:
    torch.manual_seed(seed)
    return TDM(preset("tiny", n_layer=2, d_model=64, n_head=4, d_ff=128, context=context)).eval()


def make_history(T: int, n: int, m: int, seed: int = 0) -> History:
    rng = np.random.default_rng(seed)
    return History(
        rng.normal(size=(T, n)).astype(np.float32),
        rng.uniform(size=T).astype(np.float32),
        rng.uniform(-1, 1, size=(T - 1, m)).astype(np.float32),
    )


def toy_reward(next_obs, action):
    return torch.tanh(next_obs[:, 0]) * 0.5 + 0.5 - 0.1 * action.pow(2).mean(-1)


@pytest.mark.parametrize("n,m,T", [(5, 1, 12), (3, 2, 1), (7, 3, 4)])
@pytest.mark.parametrize("reward_fn", [None, toy_reward], ids=["predicted", "from_obs"])
def test_kv_cache_matches_naive_decoding(n, m, T, reward_fn):
    model = make_model()
    history = make_history(T, n, m)
    actions = torch.rand(6, 4, m) * 2 - 1
    kw = dict(reward_fn=reward_fn, greedy=True, return_logits=True)
    kv = model.imagine(history, actions, **kw)
    naive = model.imagine(history, actions, naive=True, **kw)
    obs_kv, rew_kv, logits_kv = kv.obs, kv.rewards, kv.logits
    obs_naive, rew_naive, logits_naive = naive.obs, naive.rewards, naive.logits
    assert obs_kv.shape == (6, 4, n) and rew_kv.shape == (6, 4)
    assert logits_kv.shape == (6, 4, n + (reward_fn is None), model.cfg.vocab_size)
    torch.testing.assert_close(logits_kv, logits_naive, atol=1e-4, rtol=1e-4)
    assert torch.equal(obs_kv, obs_naive) and torch.equal(rew_kv, rew_naive)


def test_candidates_are_independent():
    """Each candidate's imagination depends on its own actions only, not on its neighbours in the batch."""
    model = make_model()
    history = make_history(5, 4, 2)
    actions = torch.rand(5, 3, 2) * 2 - 1
    together = model.imagine(history, actions, greedy=True).obs
    alone = model.imagine(history, actions[2:3], greedy=True).obs
    assert torch.equal(together[2:3], alone)


def test_sampling_is_reproducible_with_a_generator_and_varies_without():
    model = make_model()
    history = make_history(5, 4, 2)
    actions = torch.zeros(16, 3, 2)
    a = model.imagine(history, actions, generator=torch.Generator().manual_seed(1)).obs
    b = model.imagine(history, actions, generator=torch.Generator().manual_seed(1)).obs
    assert torch.equal(a, b)
    assert len(torch.unique(a[:, 0, 0])) > 1  # identical candidates still draw different futures


@pytest.mark.parametrize("reward_fn", [None, toy_reward], ids=["predicted", "from_obs"])
def test_requests_merged_into_one_batch_decode_like_each_alone(reward_fn):
    """The ModelServer's merge: histories of different lengths, left-padded, give each request's own result."""
    model = make_model()
    histories = [make_history(T, 4, 2) for T in (1, 7, 3)]
    actions = torch.rand(3, 5, 4, 2) * 2 - 1
    fns = None if reward_fn is None else [reward_fn] * 3
    merged = model.imagine_batch(histories, actions, reward_fns=fns, greedy=True, return_logits=True)
    assert (
        merged.obs.shape == (3, 5, 4, 4) and merged.rewards.shape == (3, 5, 4) and merged.actions.shape == (3, 5, 4, 2)
    )
    for b, history in enumerate(histories):
        alone = model.imagine(history, actions[b], reward_fn=reward_fn, greedy=True, return_logits=True)
        torch.testing.assert_close(merged.logits[b], alone.logits, atol=1e-4, rtol=1e-4)
        assert torch.equal(merged.obs[b], alone.obs) and torch.equal(merged.rewards[b], alone.rewards)


def test_histories_of_different_layouts_are_not_merged():
    with pytest.raises(ConfigError, match="share one layout"):
        make_model().imagine_batch([make_history(3, 4, 2), make_history(3, 5, 2)], torch.zeros(2, 1, 1, 2))


def test_proposal_actions_are_the_bc_mean_plus_noise():
    """With noise in place of actions, each action is the policy's mean at the imagined state plus the noise."""
    model = make_model()
    history = make_history(4, 3, 2)
    noise = torch.zeros(2, 3, 2)
    noise[1] = 0.3
    out = model.imagine(history, None, noise=noise, greedy=True, return_logits=True)
    assert out.actions.shape == (2, 3, 2) and out.actions.abs().max() <= 1
    mean = model._mean_action(out.logits[0, 0, 0][None])  # logits of the first action entry
    torch.testing.assert_close(out.actions[0, 0, 0], mean[0])
    torch.testing.assert_close(out.actions[1, 0, 0], (mean[0] + 0.3).clamp(-1, 1))
    # Teacher-forcing the proposal's own actions reproduces its imagined observations.
    again = model.imagine(history, out.actions, greedy=True)
    assert torch.equal(again.obs, out.obs)


def test_batched_bc_actions_match_one_by_one():
    model = make_model()
    histories = [make_history(T, 4, 3) for T in (2, 6)]
    together = model.act_batch(histories)
    for b, h in enumerate(histories):
        torch.testing.assert_close(together[b], model.act(h))


def test_history_longer_than_the_window_is_truncated_to_whole_timesteps():
    n, m, N = 4, 2, 3
    layout = StepLayout(n, m)
    model = make_model(context=64)
    long_history = make_history(40, n, m)  # 40 steps * 8 tokens >> 64
    actions = torch.rand(3, N, m) * 2 - 1
    got = model.imagine(long_history, actions, greedy=True).obs
    budget = 64 - N * layout.tokens_per_step
    keep = 1 + (budget - (n + 1)) // layout.tokens_per_step  # the steps that fit
    short = History(long_history.observations[-keep:], long_history.rewards[-keep:], long_history.actions[-keep + 1 :])
    expected = model.imagine(short, actions, greedy=True).obs
    assert torch.equal(got, expected)
    assert len(short.tokens(10_000)) + N * layout.tokens_per_step <= 64


def test_horizon_that_cannot_fit_the_window_is_an_error():
    model = make_model(context=32)
    message = r"horizon 5 does not fit the context of the model \(32 tokens.*the longest horizon is 3"
    with pytest.raises(ConfigError, match=message):
        model.imagine(make_history(3, 4, 2), torch.zeros(2, 5, 2))


def test_bad_action_shapes_are_errors():
    model = make_model()
    with pytest.raises(ConfigError, match=r"actions must be \[1, K >= 1, N >= 1, 2\]"):
        model.imagine(make_history(3, 4, 2), torch.zeros(2, 5, 3))
    with pytest.raises(ConfigError, match="max_step_tokens"):
        model.imagine(make_history(2, 300, 2), torch.zeros(1, 1, 2))


def test_act_decodes_actions_like_a_full_forward_pass():
    model = make_model()
    history = make_history(6, 4, 3)
    action = model.act(history)
    assert action.shape == (1, 3) and action.abs().max() <= 1
    # Greedy decode by hand with full forward passes.
    seq = torch.as_tensor(history.tokens(10_000)).long()
    seq = torch.cat([seq, torch.tensor([SEPARATOR])]).unsqueeze(0)
    for _ in range(3):
        nxt = model(seq, 4, 3)[:, -1, :1024].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
    torch.testing.assert_close(action, decode_actions(seq[:, -3:]).float())
    samples = model.act(history, samples=8, greedy=False, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (8, 3)


def test_tiny_model_overfits_a_short_trajectory():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    T, n, m = 12, 3, 2
    obs = np.cumsum(rng.normal(size=(T, n)), axis=0)
    tokens = torch.from_numpy(tokenize(obs, rng.uniform(size=T), rng.uniform(-1, 1, size=(T, m)))).unsqueeze(0)
    model = TDM(preset("tiny", context=tokens.shape[1]))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = model.loss(tokens, n, m).item()
    for _ in range(150):
        loss = model.loss(tokens, n, m)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 5.0  # ~log(1026) at initialization
    assert loss.item() < 0.05


def test_loss_ignores_padding_and_separators():
    model = make_model()
    rng = np.random.default_rng(1)
    tokens = torch.from_numpy(tokenize(rng.normal(size=(4, 3)), rng.uniform(size=4), rng.uniform(-1, 1, (4, 2))))
    padded = torch.cat([tokens, torch.full((9,), PAD)])
    torch.testing.assert_close(model.loss(tokens[None], 3, 2), model.loss(padded[None], 3, 2))


def test_rows_with_different_layouts_in_one_batch():
    """A generalist batch mixes environments: obs_dim/act_dim per row give the same loss as separate rows."""
    model = make_model()
    rng = np.random.default_rng(2)
    a = torch.from_numpy(tokenize(rng.normal(size=(4, 3)), rng.uniform(size=4), rng.uniform(-1, 1, (4, 2))))
    b = torch.from_numpy(tokenize(rng.normal(size=(3, 5)), rng.uniform(size=3), rng.uniform(-1, 1, (3, 1))))
    b = torch.cat([b, torch.full((len(a) - len(b),), PAD)])
    logits = model(torch.stack([a, b]), torch.tensor([3, 5]), torch.tensor([2, 1]))
    torch.testing.assert_close(logits[0], model(a[None], 3, 2)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits[1], model(b[None], 5, 1)[0], atol=1e-5, rtol=1e-5)


def test_preset_sizes():
    counts = {}
    for name in PRESETS:
        with torch.device("meta"):
            counts[name] = TDM(preset(name)).num_parameters()
    assert 0.5e6 < counts["tiny"] < 2e6
    assert 5e6 < counts["small"] < 20e6
    assert abs(counts["base"] / 77e6 - 1) < 0.1  # the paper's specialist
    assert abs(counts["large"] / 362e6 - 1) < 0.1  # the paper's big generalist
    with pytest.raises(ConfigError, match="unknown model preset"):
        preset("huge")


def test_bin_embeddings_start_smooth_in_the_bin_index():
    """Neighbouring value bins start alike, far ones do not; the slow waves lead; the std is the init's; ``normal``
    is GPT-2's init."""

    def neighbour_similarity(model: TDM, gap: int) -> float:
        table = model.tok_emb.weight[:NUM_BINS].detach()
        return F.cosine_similarity(table[:-gap], table[gap:]).mean().item()

    torch.manual_seed(0)
    smooth = TDM(preset("tiny"))
    assert neighbour_similarity(smooth, 1) > 0.9
    assert neighbour_similarity(smooth, 256) < 0.3
    # Led by its slowest waves: two directions hold most of the table, so that moving the output along them shifts
    # the predicted distribution along the bins (70% of the squared norm; 20% with equal amplitudes).
    singular = torch.linalg.svdvals(smooth.tok_emb.weight[:NUM_BINS].detach().double())
    assert (singular[:2] ** 2).sum() / (singular**2).sum() > 0.5
    assert abs(smooth.tok_emb.weight[:NUM_BINS].std().item() / INIT_STD - 1) < 0.05
    assert smooth.head.weight is smooth.tok_emb.weight  # the output head starts smooth too
    assert abs(neighbour_similarity(TDM(preset("tiny", embedding_init="normal")), 1)) < 0.05
    odd = TDM(preset("tiny", d_model=129, n_head=3))  # an odd width: the last column starts at 0
    assert torch.all(odd.tok_emb.weight[:NUM_BINS, -1] == 0)
    with pytest.raises(ConfigError, match="embedding_init must be one of sinusoidal, normal, got 'fourier'"):
        preset("tiny", embedding_init="fourier")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_imagination_on_cuda_runs_where_the_model_is():
    model = make_model().cuda()
    out = model.imagine(make_history(5, 4, 2), torch.zeros(3, 2, 2), reward_fn=toy_reward)
    assert out.obs.device.type == "cuda" and out.rewards.device.type == "cuda"
    cpu_obs = make_model().imagine(make_history(5, 4, 2), torch.zeros(3, 2, 2), greedy=True).obs
    gpu_obs = model.imagine(make_history(5, 4, 2), torch.zeros(3, 2, 2), greedy=True).obs
    assert torch.allclose(cpu_obs, gpu_obs.cpu(), atol=0.05)
