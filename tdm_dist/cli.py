"""The ``tdm`` command: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import json
import sys
import time

from tdm_dist.errors import TdmError


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
    p.add_argument("--preset", default="tiny", help="tiny (~1M), small (~10M), base (~77M), large (~362M)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_model_info)

    p = sub.add_parser(
        "smoke",
        help="a one-minute vertical slice: real cartpole episode -> tokens -> tiny TDM -> KV-cache imagination",
    )
    p.add_argument("--steps", type=int, default=300, help="training steps of the tiny model")
    p.add_argument("--seed", type=int, default=0, help="seed of the episode, the model and the sampling")
    p.set_defaults(func=_cmd_smoke)
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
