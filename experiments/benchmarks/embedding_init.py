"""Does the TDM learn what an action does? Next-velocity NLL of tiny TDMs whose bin embeddings start three ways.

The data is random-action cartpole-swingup (the pole hangs and swings; the cart's and pole's velocities change by
about 0.1 * a and 0.13 * a per step, correlation with the action above 0.85). Each model trains in this process
for the same steps on the same windows, then is scored on held-out episodes by the NLL of the next cart velocity
(xdot) and pole angular velocity (thdot) tokens: with the real actions in the window, and with the action tokens
shuffled among themselves. A model that uses the action does worse when they are shuffled; one that does not,
the same. The inits (``TDMConfig.embedding_init``):

- ``normal``: GPT-2's N(0, 0.02) table;
- ``flat``: sines and cosines of the bin index, every frequency at the same amplitude (the default before);
- ``sinusoidal``: the same waves with amplitudes proportional to the square root of their periods (the default now).

    python experiments/benchmarks/embedding_init.py            # the full measurement (~9 minutes on 2 cores)
    python experiments/benchmarks/embedding_init.py --smoke    # seconds; checks the script runs

Last line: ``xdot_nll_ratio=<x>``, the held-out xdot NLL of ``flat`` over that of ``sinusoidal`` (above 1: the new
init predicts the cart better).
"""

from __future__ import annotations

import argparse
import math
import tempfile

import numpy as np
import torch
import torch.nn.functional as F

from tdm_dist import envs
from tdm_dist.data import EpisodeWriter
from tdm_dist.data.dataset import DatasetConfig, in_memory_windows
from tdm_dist.learner.train import TrainConfig, _TDMObjective, computes_in_bf16, optimizer, optimizer_step
from tdm_dist.model import TDM, preset
from tdm_dist.model.transformer import INIT_STD
from tdm_dist.runtime.env_worker import EnvWorker, ExpertConfig
from tdm_dist.tokenizer import NUM_BINS, StepLayout

ENV = "cartpole-swingup"
INITS = ("normal", "flat", "sinusoidal")
VELOCITIES = {"xdot": 3, "thdot": 4}  # observation entries of cartpole: x, cos, sin, x', theta'


def flat_bin_embeddings(dim: int) -> torch.Tensor:
    """The sinusoidal init as it was before its amplitudes grew with the period: every wave at the same amplitude."""
    pairs = dim // 2
    index = torch.arange(NUM_BINS, dtype=torch.float64)[:, None]
    rate = math.pi * 2.0 ** -torch.linspace(1.0, math.log2(NUM_BINS) + 1, pairs, dtype=torch.float64)
    out = torch.zeros(NUM_BINS, dim, dtype=torch.float64)
    out[:, :pairs], out[:, pairs : 2 * pairs] = torch.sin(index * rate), torch.cos(index * rate)
    return (out * INIT_STD * math.sqrt(2)).float()


def random_episodes(root: str, episodes: int, steps: int) -> None:
    worker = EnvWorker(ENV)
    with EpisodeWriter(root, rows_per_file=episodes) as writer:
        for i in range(episodes):
            writer.add(worker.collect_episode(i, 1000 + i, ExpertConfig(kind="random"), steps=steps))


def velocity_nll(model: TDM, tokens: torch.Tensor, layout: StepLayout, shuffle: bool) -> dict[str, float]:
    """Mean NLL of the next xdot and thdot tokens of ``tokens`` [W, T+1]; ``shuffle``: permute the action tokens."""
    n, m, S = layout.obs_dim, layout.act_dim, layout.tokens_per_step
    inputs, targets = tokens[:, :-1].clone(), tokens[:, 1:]
    slot = torch.arange(inputs.shape[1]) % S
    if shuffle:
        actions = inputs[:, slot >= n + 2]
        order = torch.randperm(actions.numel(), generator=torch.Generator().manual_seed(0))
        inputs[:, slot >= n + 2] = actions.flatten()[order].view_as(actions)
    with torch.no_grad():
        nll = F.cross_entropy(model(inputs, n, m).float().transpose(1, 2), targets, reduction="none")
    target_slot = (slot + 1) % S  # the slot of the token each position predicts
    return {name: nll[:, target_slot == j].mean().item() for name, j in VELOCITIES.items()}


def train_one(init: str, train: torch.Tensor, args, layout: StepLayout) -> TDM:
    torch.manual_seed(args.seed)
    overrides = {"n_layer": 1, "d_model": 32, "n_head": 2, "d_ff": 64} if args.smoke else {}
    embedding_init = "normal" if init == "normal" else "sinusoidal"
    model = TDM(preset("tiny", context=args.context, embedding_init=embedding_init, **overrides))
    if init == "flat":
        with torch.no_grad():
            model.tok_emb.weight[:NUM_BINS] = flat_bin_embeddings(model.cfg.d_model)
    cfg = TrainConfig(data="", out="", steps=args.steps, lr=args.lr)
    objective = _TDMObjective(model)
    opt, sched = optimizer(objective.parameters(), cfg)
    rng = np.random.default_rng(args.seed)
    n = torch.full((args.batch_size,), layout.obs_dim)
    m = torch.full((args.batch_size,), layout.act_dim)
    bf16 = computes_in_bf16(torch.device("cpu"))
    for _ in range(args.steps):
        batch = {"tokens": train[rng.integers(0, len(train), args.batch_size)], "obs_dim": n, "act_dim": m}
        optimizer_step(objective, batch, opt, sched, cfg.grad_clip, bf16)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny model, data and run: checks the script runs")
    parser.add_argument("--episodes", type=int, default=40, help="random-action episodes (5%% held out)")
    parser.add_argument("--episode-steps", type=int, default=400)
    parser.add_argument("--steps", type=int, default=1200, help="optimizer steps per model")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.smoke:
        args.episodes, args.episode_steps, args.steps, args.batch_size, args.context = 20, 40, 3, 2, 64
    torch.set_num_threads(args.threads)
    spec = envs.spec(ENV)
    layout = StepLayout(spec.obs_dim, spec.act_dim)
    with tempfile.TemporaryDirectory() as root:
        random_episodes(root, args.episodes, args.episode_steps)
        cfg = DatasetConfig(path=root, window_tokens=args.context + 1, epochs=40, seed=args.seed)
        train, val = (in_memory_windows(root, cfg, split)["tokens"] for split in ("train", "val"))
    print(
        f"{args.episodes} random-action episodes of {ENV} ({len(val)} held-out windows); "
        f"{args.steps} steps of {args.batch_size} x {args.context} tokens per model"
    )
    print(f"{'init':<11} {'xdot NLL':>9} {'shuffled':>9} {'thdot NLL':>10} {'shuffled':>9}")
    scores = {}
    for init in INITS:
        model = train_one(init, train, args, layout)
        real, shuffled = (velocity_nll(model, val, layout, s) for s in (False, True))
        scores[init] = real
        print(
            f"{init:<11} {real['xdot']:>9.2f} {shuffled['xdot']:>9.2f} {real['thdot']:>10.2f} {shuffled['thdot']:>9.2f}"
        )
    print(f"xdot_nll_ratio={scores['flat']['xdot'] / scores['sinusoidal']['xdot']:.3f}")


if __name__ == "__main__":
    main()
