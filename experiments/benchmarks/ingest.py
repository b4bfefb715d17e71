"""Ingest efficiency: learner tokens/s fed by the Ray Data pipeline against the same loop fed from memory.

Both loops run the learner's training step (forward, token NLL, backward, AdamW) on the same model, batch
size and windows; one reads batches from ``make_datasets``' train dataset through a streaming split (how a
Ray Train worker reads its shard), the other from tensors built beforehand with ``in_memory_windows``.
Steady state only: the first ``--warmup`` steps of each loop are not timed. A dataset is collected first
if ``--data`` does not exist (random-action cartpole-swingup episodes: windows cost the same whatever the
actions).

    python experiments/benchmarks/ingest.py            # ~3 minutes on 2 cores
    python experiments/benchmarks/ingest.py --smoke    # seconds; checks the script runs

Last line: ``ingest_efficiency=<x>`` (Ray Data tokens/s divided by in-memory tokens/s).
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from pathlib import Path

import torch

from tdm_dist.data import DatasetConfig, in_memory_windows, make_datasets
from tdm_dist.model import TDM, preset
from tdm_dist.model.transformer import token_nll


def steps_per_second(batches, model, opt, steps: int, warmup: int) -> float:
    """Training steps per second over ``steps`` batches after ``warmup`` untimed ones."""
    batches = iter(batches)
    tic = None
    for i in range(warmup + steps):
        if i == warmup:
            tic = time.perf_counter()
        batch = next(batches)
        tokens, obs_dim, act_dim = batch["tokens"], batch["obs_dim"], batch["act_dim"]
        loss = token_nll(model(tokens[:, :-1], obs_dim, act_dim), tokens, obs_dim, act_dim)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps / (time.perf_counter() - tic)


def ensure_dataset(path: Path, episodes: int) -> None:
    from tdm_dist.runtime.collect import CollectConfig, collect
    from tdm_dist.runtime.env_worker import ExpertConfig

    if not path.exists():
        cfg = CollectConfig("cartpole-swingup", episodes, str(path), ExpertConfig(kind="random"), workers=2)
        collect(cfg, progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="dataset (default: collect a random one in a temp dir)")
    parser.add_argument("--episodes", type=int, default=20, help="episodes to collect when --data is missing")
    parser.add_argument("--context", type=int, default=1023, help="tokens per window")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per loop")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="tiny budget: 4 episodes, context 64, 4 steps")
    args = parser.parse_args()
    if args.smoke:
        args.episodes, args.context, args.steps, args.warmup = 4, 64, 4, 1

    import ray

    ray.init(num_cpus=max(3, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    tmp = tempfile.TemporaryDirectory()
    data = Path(args.data) if args.data else Path(tmp.name) / "cartpole"
    ensure_dataset(data, args.episodes)
    torch.manual_seed(0)
    torch.set_num_threads(1)  # one core for the learner, as a Ray Train worker with one CPU; Ray Data gets the rest
    cfg = DatasetConfig(path=str(data), window_tokens=args.context, val_fraction=0.1, seed=0, epochs=50)
    model = TDM(preset("tiny", context=args.context))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    windows = in_memory_windows(data, cfg, "train")
    n = windows["tokens"].shape[0]
    memory_batches = (
        {k: v[i : i + args.batch_size] for k, v in windows.items()}
        for i in itertools.cycle(range(0, n - args.batch_size + 1, args.batch_size))
    )
    memory = steps_per_second(memory_batches, model, opt, args.steps, args.warmup)

    train, _ = make_datasets(cfg)
    shard = train.streaming_split(1, equal=True)[0]
    ray_batches = iter(shard.iter_torch_batches(batch_size=args.batch_size, drop_last=True))
    ray_rate = steps_per_second(ray_batches, model, opt, args.steps, args.warmup)
    for _ in ray_batches:  # the rest of the pass, untimed: a pass left open keeps running in threads that outlive
        pass  # ray.shutdown(), and the process then exits with status 1 before printing
    # Ray prints the raylet's warnings on the driver's stdout whenever they come (log_to_driver or not): after the
    # shutdown none can land below the last line.
    ray.shutdown()

    tokens_per_step = args.batch_size * args.context
    print(f"dataset {data}: {n} windows of {args.context} tokens ({cfg.epochs} epochs), batch {args.batch_size}, tiny")
    print(f"in-memory tensors: {memory * tokens_per_step:10.0f} tokens/s")
    print(f"Ray Data         : {ray_rate * tokens_per_step:10.0f} tokens/s")
    print(f"ingest_efficiency={ray_rate / memory:.3f}")


if __name__ == "__main__":
    main()
