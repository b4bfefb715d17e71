"""The ``tdm`` command: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import json
import sys
import time

from tdm_dist.errors import ConfigError, DataError, TdmError


def _cmd_envs(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from tdm_dist import envs

    rows = []
    for name in tqdm(envs.names(), desc="reading env specs", unit="env", leave=False, disable=args.json):
        s = envs.spec(name)
        rows.append(
            {"name": name, "obs_dim": s.obs_dim, "act_dim": s.act_dim, "reward_from_obs": s.has_reward_from_obs}
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    width = max(len(r["name"]) for r in rows)
    print(f"{'name':<{width}}  {'obs':>4}  {'act':>4}  reward from obs")
    for r in rows:
        print(f"{r['name']:<{width}}  {r['obs_dim']:>4}  {r['act_dim']:>4}  {'yes' if r['reward_from_obs'] else 'no'}")
    print(f"{len(rows)} environments")


def _cmd_model_info(args: argparse.Namespace) -> None:
    import torch

    from tdm_dist.model import TDM, preset

    cfg = preset(args.preset)
    with torch.device("meta"):  # count parameters without allocating them
        params = TDM(cfg).num_parameters()
    info = {
        "preset": args.preset,
        "parameters": params,
        "layers": cfg.n_layer,
        "width": cfg.d_model,
        "heads": cfg.n_head,
        "mlp_width": cfg.d_ff,
        "context": cfg.context,
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return
    print(f"preset      {args.preset}")
    print(f"parameters  {params:,} ({params / 1e6:.1f}M)")
    print(f"layers      {cfg.n_layer}")
    print(f"width       {cfg.d_model} ({cfg.n_head} heads, MLP {cfg.d_ff})")
    print(f"context     {cfg.context} tokens")


def _cmd_smoke(args: argparse.Namespace) -> None:
    from tdm_dist.smoke import run_smoke

    result = run_smoke(steps=args.steps, seed=args.seed)
    print("smoke " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))


def _cmd_collect(args: argparse.Namespace) -> None:
    from tdm_dist.runtime.collect import CollectConfig, collect
    from tdm_dist.runtime.env_worker import ExpertConfig

    planner = {k: v for k, v in {"samples": args.samples, "horizon": args.horizon}.items() if v is not None}
    cfg = CollectConfig(
        env=args.env,
        episodes=args.episodes,
        out=args.out,
        expert=ExpertConfig.parse(args.expert, action_noise=args.action_noise, planner=planner),
        workers=args.workers,
        seed=args.seed,
    )
    result = collect(cfg, address=args.address)
    if result["collected"] == 0:
        print(f"{args.out}: all {args.episodes} episodes of {args.env} are already there; nothing to do")
        return
    print(
        f"collected {result['collected']} episodes of {args.env} into {args.out} "
        f"(mean return {result['mean_return']:.1f}; {result['skipped']} were already there)"
    )


def _cmd_expert_train(args: argparse.Namespace) -> None:
    from tdm_dist.envs import spec
    from tdm_dist.runtime.cluster import init_ray
    from tdm_dist.runtime.rllib_expert import train_sac

    spec(args.env)  # unknown names list close matches before Ray starts
    if args.iterations < 1:
        raise ConfigError(f"--iterations must be >= 1, got {args.iterations}")
    init_ray(args.address)
    path = train_sac(args.env, args.out, args.iterations, seed=args.seed)
    print(f"saved the SAC expert of {args.env} to {path}; collect with --expert rllib:{path}")


def _cmd_data_info(args: argparse.Namespace) -> None:
    from tdm_dist.data import summarize, validate_dataset

    counts = validate_dataset(args.path)
    summary = summarize(args.path)
    if not summary:
        raise DataError(f"{args.path} holds no episodes")
    if args.json:
        print(json.dumps({"files": counts["files"], "envs": summary}, indent=2))
        return
    print(f"{args.path}: {counts['episodes']} episodes in {counts['files']} files")
    print(f"{'env':<24} {'episodes':>8} {'steps':>9} {'obs':>4} {'act':>4}  return mean ± std [min, median, max]")
    for env, s in summary.items():
        r = s["return"]
        print(
            f"{env:<24} {s['episodes']:>8} {s['steps']:>9} {s['obs_dim']:>4} {s['act_dim']:>4}  "
            f"{r['mean']:.1f} ± {r['std']:.1f} [{r['min']:.1f}, {r['median']:.1f}, {r['max']:.1f}]"
        )


def _train_config(args: argparse.Namespace, init_from: str | None = None):
    from tdm_dist.learner.train import TrainConfig

    fields = {
        k: getattr(args, k)
        for k in ("preset", "context", "steps", "batch_size", "lr", "warmup_steps", "workers", "eval_every", "seed")
        if getattr(args, k, None) is not None
    }
    return TrainConfig(data=args.data, out=args.out, init_from=init_from, **fields)


def _cmd_train(args: argparse.Namespace) -> None:
    from tdm_dist.learner.train import train

    result = train(_train_config(args, init_from=getattr(args, "from_checkpoint", None)), address=args.address)
    print(
        f"trained {result['step']} steps: train loss {result['train/loss']:.3f}, val nll {result['val/nll']:.3f} "
        f"(unigram baseline {result['val/unigram_nll']:.3f}); checkpoint {result['checkpoint']}"
    )


def _add_train_arguments(p: argparse.ArgumentParser, finetune: bool) -> None:
    p.add_argument("--data", required=True, help="Parquet dataset written by `tdm collect`")
    p.add_argument("--out", required=True, help="run directory; re-running with the same --out resumes")
    if not finetune:
        p.add_argument("--preset", default=None, help="model preset: tiny (default), small, base, large")
        p.add_argument("--context", type=int, default=None, help="tokens per window (default: the preset's)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default 2000)")
    p.add_argument("--batch-size", type=int, default=None, help="windows per step per worker (default 16)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 1e-3)")
    p.add_argument("--warmup-steps", type=int, default=None, help="linear warmup steps (default 100)")
    p.add_argument("--workers", type=int, default=None, help="Ray Train workers (default 2)")
    p.add_argument("--eval-every", type=int, default=None, help="steps between validation and checkpoints")
    p.add_argument("--seed", type=int, default=None)
    _add_address(p)


def _add_address(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local instance)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tdm",
        description="Transformer dynamics models (Schubert et al. 2023) for model-predictive control, on Ray.",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("envs", help="list every environment with its dimensions")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_envs)

    p = sub.add_parser("model-info", help="parameter count and shape of a model preset")
    p.add_argument(
        "--preset", default="tiny", help="tiny (1.1M), small (11.5M), base (79.7M), large (371.9M parameters)"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_model_info)

    p = sub.add_parser(
        "smoke",
        help="a one-minute vertical slice: real cartpole episode -> tokens -> tiny TDM -> KV-cache imagination",
    )
    p.add_argument("--steps", type=int, default=300, help="training steps of the tiny model")
    p.add_argument("--seed", type=int, default=0, help="seed of the episode, the model and the sampling")
    p.set_defaults(func=_cmd_smoke)

    p = sub.add_parser("collect", help="collect expert episodes into a Parquet dataset (resumable)")
    p.add_argument("--env", required=True, help="environment name (see `tdm envs`)")
    p.add_argument("--episodes", type=int, required=True, help="episode ids 0..N-1 end up in the dataset")
    p.add_argument("--out", required=True, help="dataset directory")
    p.add_argument("--expert", default="gt-mpc", help="gt-mpc (ground-truth MPC, default), random, or rllib:CHECKPOINT")
    p.add_argument("--action-noise", type=float, default=0.0, help="std of noise added to expert actions")
    p.add_argument("--samples", type=int, default=None, help="planner samples K (gt-mpc)")
    p.add_argument("--horizon", type=int, default=None, help="planner horizon N (gt-mpc)")
    p.add_argument("--workers", type=int, default=2, help="EnvWorker actors")
    p.add_argument("--seed", type=int, default=0, help="dataset seed; episode i uses seed*1e6 + i")
    _add_address(p)
    p.set_defaults(func=_cmd_collect)

    p = sub.add_parser("expert", help="train an RLlib expert policy")
    expert_sub = p.add_subparsers(dest="expert_command", required=True, metavar="SUBCOMMAND")
    q = expert_sub.add_parser("train", help="SAC (RLlib) on the env's gymnasium wrapper; saves an RLlib checkpoint")
    q.add_argument("--env", required=True, help="environment name (see `tdm envs`)")
    q.add_argument("--out", required=True, help="checkpoint directory")
    q.add_argument("--iterations", type=int, default=20, help="training iterations of 1000 env steps each")
    q.add_argument("--seed", type=int, default=0)
    _add_address(q)
    q.set_defaults(func=_cmd_expert_train)

    p = sub.add_parser("data", help="inspect datasets")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    q = data_sub.add_parser("info", help="envs, episodes, steps and returns of a dataset (validates every file)")
    q.add_argument("path")
    q.add_argument("--json", action="store_true", help="print JSON instead of a table")
    q.set_defaults(func=_cmd_data_info)

    p = sub.add_parser("train", help="train a TDM on a dataset with Ray Train (resumes an existing --out)")
    _add_train_arguments(p, finetune=False)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("finetune", help="continue training a checkpoint on new data, with its own schedule")
    p.add_argument("--from", dest="from_checkpoint", required=True, help="checkpoint file or run directory")
    _add_train_arguments(p, finetune=True)
    p.set_defaults(func=_cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        args.func(args)
    except TdmError as e:
        if args.debug:
            raise
        print(f"tdm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tdm {args.command}: interrupted after {time.perf_counter() - start:.0f} s", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
