"""Training speed: optimizer steps in fp32 against steps under bfloat16 autocast (``tdm train --precision``).

Measured in one run, in one process with the thread count of one Ray Train worker (``cpus_per_worker``, 1 by
default), on the demo's model and batch: preset tiny, windows of 256 cartpole tokens, 8 windows per step. Each
step is the learner's own ``optimizer_step`` (forward, backward, clipping, AdamW). Tokens are random: step
speed does not depend on them. On a CPU without native bfloat16 (no AVX512-BF16 or AMX) bf16 is emulated, and
this measures how much slower it is.

    python experiments/benchmarks/train.py             # the full measurement (~1 minute on 2 cores)
    python experiments/benchmarks/train.py --smoke     # seconds; checks the script runs

Last line: ``bf16_speedup=<x>``, fp32's seconds per step over bf16's.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tdm_dist.learner.train import TrainConfig, _TDMObjective, computes_in_bf16, optimizer, optimizer_step
from tdm_dist.model import TDM, preset


def seconds_per_step(bf16: bool, args, tokens: torch.Tensor) -> float:
    """The median seconds of one optimizer step, over ``args.steps`` steps after ``args.warmup``."""
    torch.manual_seed(0)
    cfg = TrainConfig(data="", out="")
    overrides = {"n_layer": 1, "d_model": 32, "n_head": 2, "d_ff": 64} if args.smoke else {}
    objective = _TDMObjective(TDM(preset("tiny", context=args.context, **overrides)))
    opt, sched = optimizer(objective.parameters(), cfg)
    batch = {"tokens": tokens, "obs_dim": torch.full((len(tokens),), 5), "act_dim": torch.full((len(tokens),), 1)}
    times = []
    for i in range(args.warmup + args.steps):
        tic = time.perf_counter()
        optimizer_step(objective, batch, opt, sched, cfg.grad_clip, bf16).item()  # waits for the step
        if i >= args.warmup:
            times.append(time.perf_counter() - tic)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny model and a few steps: checks the script runs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a Ray Train worker's CPUs)")
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    if args.smoke:
        args.context, args.batch_size, args.steps, args.warmup = 32, 2, 3, 1
    torch.set_num_threads(args.threads)
    tokens = torch.randint(0, 1024, (args.batch_size, args.context + 1), generator=torch.Generator().manual_seed(0))
    native = computes_in_bf16(torch.device("cpu"))
    print(f"CPU, {args.threads} thread(s); native bfloat16: {native}; batch {args.batch_size} x {args.context} tokens")
    seconds = {}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        seconds[name] = seconds_per_step(bf16, args, tokens)
        rate = args.batch_size * args.context / seconds[name]
        print(f"{name}: {seconds[name] * 1e3:.1f} ms per step, {rate:.0f} tokens/s", flush=True)
    print(f"bf16_speedup={seconds['fp32'] / seconds['bf16']:.2f}")


if __name__ == "__main__":
    main()
