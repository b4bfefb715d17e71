"""``tdm smoke``: the smallest end-to-end run of what exists, in about a minute on 2 CPU cores.

A real cartpole-swingup episode is tokenized, a tiny TDM is fitted to it, and the model imagines the
episode's own future with the KV-cache decoder; the naive decoder checks the KV path on the way.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm import trange

from tdm_dist import envs
from tdm_dist.model import TDM, preset
from tdm_dist.tokenizer import History, StepLayout, tokenize

ENV = "cartpole-swingup"


def random_episode(name: str, steps: int, seed: int):
    """observations [T+1, n], rewards [T+1] (0 first), actions [T, m] from smoothed random actions."""
    env = envs.make(name, seed=seed)
    rng = np.random.default_rng(seed)
    obs, rewards, actions = [env.reset(seed=seed)], [0.0], []
    action = np.zeros(env.spec.act_dim)
    for _ in range(steps):
        action = np.clip(0.8 * action + 0.5 * rng.normal(size=env.spec.act_dim), -1, 1)
        o, r, _ = env.step(action)
        obs.append(o), rewards.append(r), actions.append(action)
    return np.array(obs, np.float32), np.array(rewards, np.float32), np.array(actions, np.float32)


def run_smoke(steps: int = 300, seed: int = 0, episode_steps: int = 300, window_steps: int = 24) -> dict:
    torch.manual_seed(seed)
    start = time.perf_counter()
    obs, rewards, actions = random_episode(ENV, episode_steps, seed)
    layout = StepLayout(obs.shape[1], actions.shape[1])
    tokens = torch.from_numpy(tokenize(obs[:-1], rewards[:-1], actions))  # [T * L]

    window = window_steps * layout.tokens_per_step
    model = TDM(preset("tiny", context=window))  # the context a model can use is the window it was trained on
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    starts = np.arange(0, episode_steps - window_steps) * layout.tokens_per_step
    rng = np.random.default_rng(seed)
    losses = []
    for _ in trange(steps, desc="fitting a tiny TDM", unit="step"):
        batch = torch.stack([tokens[s : s + window] for s in rng.choice(starts, size=8)])
        loss = model.loss(batch, layout.obs_dim, layout.act_dim)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()

    # Imagine the episode's own future from t0, candidate 0 with the actions actually taken.
    t0, horizon, candidates = episode_steps // 2, 10, 64
    history = History(obs[: t0 + 1], rewards[: t0 + 1], actions[:t0])
    plans = torch.from_numpy(rng.uniform(-1, 1, size=(candidates, horizon, layout.act_dim)).astype(np.float32))
    plans[0] = torch.from_numpy(actions[t0 : t0 + horizon])
    reward = envs.reward_fn(ENV)
    tic = time.perf_counter()
    imagined = model.imagine(history, plans, reward_fn=reward, greedy=True).obs
    kv_s = time.perf_counter() - tic
    naive = model.imagine(history, plans[:4], reward_fn=reward, greedy=True, naive=True).obs
    truth = obs[t0 + 1 : t0 + 1 + horizon]
    rmse = np.sqrt(((imagined[0].numpy() - truth) ** 2).mean(axis=1))
    return {
        "env": ENV,
        "loss_first": losses[0],
        "loss_last": float(np.mean(losses[-20:])),
        "rmse_1step": float(rmse[0]),
        f"rmse_{horizon}step": float(rmse[-1]),
        "kv_matches_naive": bool(torch.equal(imagined[:4], naive)),
        "imagined_tokens_per_s": candidates * horizon * layout.obs_dim / kv_s,
        "wall_s": time.perf_counter() - start,
    }
