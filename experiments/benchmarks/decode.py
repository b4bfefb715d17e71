"""Imagination speed: KV-cache ``imagine`` against the naive decoder that re-encodes every token.

Measured in one run, on cartpole-swingup dimensions (n=5, m=1), K=128 candidates, horizon N=25, preset
tiny, ~200 tokens of history, rewards computed from the predicted observations (the planner's setting):
imagined tokens per second of both decoders, and of the ``base`` preset (~77M, the paper's specialist)
at K=128 to set beside the paper's 500 tokens/s on one TPU core. Weights are random: decode speed does
not depend on them.

    python experiments/benchmarks/decode.py             # the full measurement (~4 minutes on 2 cores)
    python experiments/benchmarks/decode.py --smoke     # seconds; checks the script runs

Last line: ``kv_speedup=<x>``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from tdm_dist import envs
from tdm_dist.model import TDM, preset
from tdm_dist.tokenizer import History

ENV = "cartpole-swingup"


def history_of(tokens: int, spec: envs.EnvSpec, seed: int = 0) -> History:
    """A real random-action history of as many whole timesteps as fit in ``tokens``."""
    steps = 1 + (tokens - spec.obs_dim - 1) // (spec.obs_dim + spec.act_dim + 2)
    env, rng = envs.make(ENV, seed=seed), np.random.default_rng(seed)
    obs, rew, act = [env.reset(seed=seed)], [0.0], []
    for _ in range(steps - 1):
        a = rng.uniform(-1, 1, spec.act_dim)
        o, r, _ = env.step(a)
        obs.append(o), rew.append(r), act.append(a)
    return History(np.array(obs, np.float32), np.array(rew, np.float32), np.array(act, np.float32).reshape(-1, 1))


def tokens_per_second(model, history, actions, reward_fn, *, naive=False, repeats=1) -> tuple[float, float]:
    """(imagined tokens per second, seconds per call): the median of ``repeats`` timed calls."""
    K, N, _ = actions.shape
    times = []
    for _ in range(repeats):
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        tic = time.perf_counter()
        model.imagine(history, actions, reward_fn=reward_fn, naive=naive)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - tic)
    seconds = statistics.median(times)
    return K * N * history.layout.obs_dim / seconds, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", "-K", type=int, default=128)
    parser.add_argument("--horizon", "-N", type=int, default=25)
    parser.add_argument("--history-tokens", type=int, default=200)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip-base", action="store_true", help="leave out the base-preset measurement")
    parser.add_argument("--smoke", action="store_true", help="tiny budget: K=8, N=2, no base preset")
    args = parser.parse_args()
    if args.smoke:
        args.candidates, args.horizon, args.history_tokens, args.skip_base = 8, 2, 40, True

    torch.manual_seed(0)
    spec = envs.spec(ENV)
    history = history_of(args.history_tokens, spec)
    reward_fn = envs.reward_fn(spec)
    gen = torch.Generator().manual_seed(0)
    actions = (torch.rand(args.candidates, args.horizon, spec.act_dim, generator=gen) * 2 - 1).to(args.device)
    print(f"device {args.device}, torch threads {torch.get_num_threads()}")
    print(
        f"{ENV} (n={spec.obs_dim}, m={spec.act_dim}), history {len(history.tokens(10**6))} tokens "
        f"({history.observations.shape[0]} timesteps), K={args.candidates}, N={args.horizon}, rewards from obs"
    )

    tiny = TDM(preset("tiny")).to(args.device).eval()
    tokens_per_second(tiny, history, actions[:, :1], reward_fn)  # warm-up
    kv, kv_s = tokens_per_second(tiny, history, actions, reward_fn, repeats=3)
    print(f"tiny  kv-cache: {kv:10.0f} imagined tokens/s ({kv_s:.2f} s per plan, median of 3)")
    naive, naive_s = tokens_per_second(tiny, history, actions, reward_fn, naive=True)
    print(f"tiny  naive   : {naive:10.0f} imagined tokens/s ({naive_s:.2f} s per plan)")

    if not args.skip_base:
        base = TDM(preset("base")).to(args.device).eval()
        tokens_per_second(base, history, actions[:, :1], reward_fn)  # warm-up
        rate, seconds = tokens_per_second(base, history, actions, reward_fn)
        print(
            f"base  kv-cache: {rate:10.0f} imagined tokens/s at K={args.candidates} ({seconds:.2f} s per plan; "
            "paper: ~500 tokens/s for its 77M model on one TPU core)"
        )
    print(f"kv_speedup={kv / naive:.1f}")


if __name__ == "__main__":
    main()
