"""Train a TDM and sweep TDM-MPC over the horizon N on one GPU machine, in one process, without Ray.

The GPU machines this project borrows for its checks have PyTorch and a GPU but no Ray (and nothing can be
installed there from the network), so this script runs the project's own parts in process:

- training: the learner's windows (``in_memory_windows``: the Ray Data pipeline's windows, built without Ray),
  its loss, AdamW settings, warmup-and-cosine schedule and checkpoint format; one process instead of Ray Train.
  The schedule is sized to ``--train-seconds``: the step rate of the first steps sets the number of steps.
  The checkpoint kept is the one of the lowest validation NLL.
- evaluation: ``MPCAgent`` episodes on threads, each against its own in-process ``EnvWorker``, planning through
  one ``LocalModelServer`` (the ModelServer's batching and decode, its loop on a thread); episode ``i`` starts
  from the seed ``tdm eval --seed S`` gives it, so ``tdm sweep --models ground-truth,random`` at the same
  settings plays the same initial states.

On a Ray runtime the same work is ``tdm train`` and ``tdm sweep``. Example (issue 4's K=128 sweep)::

    python experiments/one_gpu_sweep.py --data data/k128 --out runs/k128 --train-seconds 150 --batch-size 64 \\
        --epochs 30 --samples 128 --horizons 5,10,25,50,100 --replan-every 3 --episodes 4 --agents 4 --steps 400

``--planners shooting,proposal --sigma 0.3`` sweeps the proposal planner (paper §5.1.1) over the same horizons too.
Writes ``OUT/model.pt``, ``OUT/train.json`` (the validation curve) and ``OUT/sweep.json`` (per planner and N: mean
return, 68% CI, per-episode returns, env steps/s), each as soon as it is known; one line per planner and N on
stdout, last ``best planner=<kind> N=<n> tdm=<mean return>``. The README's "One GPU, without Ray" has the figures
of that run on one H100.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import torch

from tdm_dist import envs
from tdm_dist.data import DatasetConfig, in_memory_windows
from tdm_dist.data.episodes import read_specs
from tdm_dist.errors import ConfigError, TdmError
from tdm_dist.learner.checkpoint import load_checkpoint, save_checkpoint
from tdm_dist.learner.train import PRECISIONS, TrainConfig, _TDMObjective, optimizer, optimizer_step, use_bf16
from tdm_dist.model import TDM
from tdm_dist.planning.optimizers import PlannerConfig
from tdm_dist.runtime.agent import AgentConfig, MPCAgent
from tdm_dist.runtime.collect import episode_seed
from tdm_dist.runtime.env_worker import EnvWorker
from tdm_dist.runtime.evaluate import summarize
from tdm_dist.runtime.model_server import LocalModelServer
from tdm_dist.tokenizer import StepLayout

RATE_STEPS = 40  # steps (after 5 untimed) whose rate sizes the schedule to --train-seconds


def train(args, device: str) -> Path:
    """Fit a TDM to ``args.data`` for about ``args.train_seconds``; -> the checkpoint of its best validation NLL."""
    cfg = TrainConfig(
        data=args.data,
        out=args.out,
        preset=args.preset,
        context=args.context,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup,
        dropout=args.dropout,
        precision=args.precision,
        workers=1,
        seed=args.seed,
        steps=10**9,
    )
    cfg.check()
    torch.manual_seed(cfg.seed)
    data = DatasetConfig(
        path=args.data, window_tokens=args.context, val_fraction=cfg.val_fraction, seed=cfg.seed, epochs=args.epochs
    )
    tic = time.perf_counter()
    train_w = {k: v.to(device) for k, v in in_memory_windows(args.data, data, "train").items()}
    val_w = {k: v.to(device) for k, v in in_memory_windows(args.data, data, "val").items()}
    W = len(train_w["tokens"])
    print(
        f"windows: {W} train ({args.epochs} epochs), {len(val_w['tokens'])} val, {args.context} tokens, "
        f"built in {time.perf_counter() - tic:.0f} s",
        flush=True,
    )

    objective = _TDMObjective(TDM(cfg.model_config())).to(device)
    model = objective.model
    opt, sched = optimizer(objective.parameters(), cfg)
    generator = torch.Generator(device).manual_seed(cfg.seed)
    bf16 = use_bf16(cfg.precision, torch.device(device))

    def validation_nll() -> float:
        objective.eval()
        total = count = 0.0
        with torch.no_grad():
            for i in range(0, len(val_w["tokens"]), cfg.batch_size):
                s, c = objective.summed({k: v[i : i + cfg.batch_size] for k, v in val_w.items()})
                total, count = total + float(s), count + float(c)
        objective.train()
        return total / count

    curve, best, step, order, at = [], (float("inf"), None, 0), 0, torch.empty(0), 0
    start = time.perf_counter()
    while step < cfg.steps:
        if at + cfg.batch_size > len(order):  # a fresh permutation of every window
            order, at = torch.randperm(W, device=device, generator=generator), 0
        idx = order[at : at + cfg.batch_size]
        at += cfg.batch_size
        loss = optimizer_step(objective, {k: v[idx] for k, v in train_w.items()}, opt, sched, cfg.grad_clip, bf16)
        step += 1
        if step == 5:
            rate_tic = synchronized(device)
        if step == 5 + RATE_STEPS:  # size the schedule: the steps that fit the budget at this rate
            rate = RATE_STEPS / (synchronized(device) - rate_tic)
            cfg.steps = max(step + 1, int(rate * (args.train_seconds - (time.perf_counter() - start))) + step)
            cfg.eval_every = max(1, cfg.steps // args.evals)
            print(
                f"{rate:.1f} steps/s ({rate * cfg.batch_size * args.context:.0f} tokens/s): {cfg.steps} steps",
                flush=True,
            )
        if step > 5 + RATE_STEPS and (step % cfg.eval_every == 0 or step == cfg.steps):
            nll = validation_nll()
            curve.append({"step": step, "train_loss": loss.item(), "val_nll": nll, "s": time.perf_counter() - start})
            print(f"step {step}/{cfg.steps}  loss {loss.item():.3f}  val NLL {nll:.3f}", flush=True)
            if nll < best[0]:
                best = (nll, {k: v.detach().clone() for k, v in model.state_dict().items()}, step)
    model.load_state_dict(best[1])
    out = Path(args.out)
    checkpoint = save_checkpoint(
        out,
        model,
        step=best[2],
        train_config=asdict(cfg),
        env_specs=read_specs(args.data),
        metrics={"step": best[2], "val/nll": best[0]},
    )
    (out / "train.json").write_text(
        json.dumps(
            {
                "curve": curve,
                "best_step": best[2],
                "best_val_nll": best[0],
                "steps": cfg.steps,
                "train_s": time.perf_counter() - start,
                "windows": W,
                "device": device,
                "parameters": sum(p.numel() for p in model.parameters()),
                "train_config": asdict(cfg),
            },
            indent=2,
        )
    )
    print(f"kept step {best[2]} (val NLL {best[0]:.3f}) -> {checkpoint}", flush=True)
    return checkpoint


def sweep(args, checkpoint: Path, device: str, context: int) -> dict:
    """TDM-MPC with each planner at each horizon.

    ``args.episodes`` episodes on ``args.agents`` threads, one merged decode per round.
    """
    results = {}
    for kind, N in itertools.product(args.planners, args.horizons):
        planner = PlannerConfig(
            kind=kind, samples=args.samples, horizon=N, replan_every=args.replan_every, sigma=args.sigma
        )
        agent_cfg = AgentConfig(
            env=args.env, planner=planner, greedy=not args.sample, steps=args.steps, context=context
        )
        server = LocalModelServer(
            str(checkpoint), device=device, max_batch=args.agents, max_wait_ms=args.max_wait_ms, seed=args.seed
        )
        agents = [MPCAgent(agent_cfg, server=server, worker=EnvWorker(args.env)) for _ in range(args.agents)]
        tic = time.perf_counter()
        with ThreadPoolExecutor(args.agents) as pool:  # agent a plays episodes a, a + agents, ...
            shares = [range(a, args.episodes, args.agents) for a in range(args.agents)]
            parts = pool.map(play, agents, shares, [args.seed] * args.agents)
            episodes = sorted((e for part in parts for e in part), key=lambda e: e["episode"])
        wall = time.perf_counter() - tic
        stats = server.describe()["stats"]
        server.close()
        returns = [e["return"] for e in episodes]
        mean, ci = summarize(returns)
        results[kind, N] = {
            "planner": kind,
            "horizon": N,
            "mean_return": mean,
            "ci68": ci,
            "returns": returns,
            "wall_s": wall,
            "env_steps_per_s": len(episodes) * episodes[0]["steps"] / wall,
            "server": stats,
        }
        print(
            f"{kind:>8s} N={N:3d}  tdm {mean:7.1f} ± {ci:5.1f}  returns {[round(r, 1) for r in returns]}  {wall:.0f} s "
            f"({results[kind, N]['env_steps_per_s']:.1f} env steps/s, {stats['batches']} batches)",
            flush=True,
        )
        (Path(args.out) / "sweep.json").write_text(
            json.dumps(
                {
                    "checkpoint": str(checkpoint),
                    "device": device,
                    "settings": vars(args),
                    "results": list(results.values()),
                },
                indent=2,
            )
        )
    return results


def synchronized(device: str) -> float:
    """The time once the device's queued work is done."""
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def play(agent: MPCAgent, episodes, seed: int) -> list[dict]:
    """Episodes ``episodes`` of ``agent``, each from the seed ``tdm eval --seed seed`` gives it."""
    return [agent.run_episode(i, episode_seed(seed, i)) for i in episodes]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a dataset of tdm collect")
    p.add_argument("--out", required=True, help="model.pt, train.json and sweep.json go here")
    p.add_argument("--checkpoint", help="skip training: sweep this checkpoint")
    p.add_argument("--env", default="cartpole-swingup")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--context", type=int, default=1023, help="tokens per window and the model's context")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument(
        "--precision",
        default="fp32",
        choices=PRECISIONS,
        help="of training (fp32: as the README's table was measured; auto: bf16 on GPUs that compute in it)",
    )
    p.add_argument("--epochs", type=int, default=30, help="epochs of windows (each with its own starts), cycled")
    p.add_argument("--train-seconds", type=float, default=150.0)
    p.add_argument("--evals", type=int, default=8, help="validations over the run (the best one is kept)")
    p.add_argument(
        "--planners",
        type=lambda s: s.split(","),
        default=["shooting"],
        help="comma-separated planner kinds, each swept over --horizons (shooting: Fig. 4a; proposal: §5.1.1)",
    )
    p.add_argument("--sigma", type=float, default=0.3, help="proposal: std of the noise on the BC actions")
    p.add_argument("--samples", type=int, default=128, help="K")
    p.add_argument("--horizons", type=lambda s: [int(x) for x in s.split(",")], default=[5, 10, 25, 50, 100])
    p.add_argument("--replan-every", type=int, default=3)
    p.add_argument("--episodes", type=int, default=4)
    p.add_argument("--agents", type=int, default=4)
    p.add_argument("--steps", type=int, default=400, help="environment steps per episode")
    p.add_argument("--max-wait-ms", type=float, default=20.0)
    p.add_argument("--sample", action="store_true", help="sample imagined tokens (default: greedy, as the demo)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    try:
        check(args)
        run(args)
    except TdmError as e:  # bad input: one line and exit 2, as the tdm command does
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def check(args) -> None:
    """Every setting the sweep needs, checked before any training: planner, horizons against the context, agents."""
    spec = envs.spec(args.env)
    context = args.context
    if args.checkpoint:
        context = load_checkpoint(args.checkpoint)["model_config"]["context"]
    elif not Path(args.data).is_dir():
        raise ConfigError(f"--data {args.data} is not a dataset folder (tdm collect writes one)")
    for kind, N in itertools.product(args.planners, args.horizons):
        PlannerConfig(kind=kind, samples=args.samples, horizon=N, replan_every=args.replan_every, sigma=args.sigma)
        StepLayout(spec.obs_dim, spec.act_dim).check_horizon(N, context, "the TDM")
    AgentConfig(env=args.env, steps=args.steps).check()
    for name in ("episodes", "agents", "batch_size", "epochs", "evals"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")


def run(args) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = True
    Path(args.out).mkdir(parents=True, exist_ok=True)
    print(f"device {device}" + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else ""), flush=True)
    checkpoint = Path(args.checkpoint) if args.checkpoint else train(args, device)
    context = load_checkpoint(checkpoint)["model_config"]["context"]
    results = sweep(args, checkpoint, device, context)
    best = max(results.values(), key=lambda r: r["mean_return"])
    print(f"best planner={best['planner']} N={best['horizon']} tdm={best['mean_return']:.1f}")


if __name__ == "__main__":
    main()
