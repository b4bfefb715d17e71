"""The ``tdm`` command: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import json
import sys
import time

from tdm_dist.errors import ConfigError, DataError, TdmError


def _cmd_envs(args: argparse.Namespace) -> None:
    if args.family is not None:
        _cmd_envs_family(args)
        return
    if args.render or args.stats:
        raise ConfigError("--render and --stats describe a procedural walker family: add --family line|chain|bush|tree")
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
    print(f"{len(rows)} environments (and randomized variants of each: NAME@rand<seed>[:<spread>])")


def _cmd_envs_family(args: argparse.Namespace) -> None:
    """``tdm envs --family F``: list, --stats or --render the bodies procwalker-F-<first>..<first+count-1>."""
    import os

    if args.render:
        os.environ.setdefault("MUJOCO_GL", "osmesa")  # read when mujoco is first imported, just below
    from tdm_dist.envs import procedural

    if args.count < 1 or args.first < 0:
        raise ConfigError(f"--count must be >= 1 and --first >= 0, got --count {args.count} --first {args.first}")
    seeds = range(args.first, args.first + args.count)
    stats = procedural.family_stats(args.family, seeds)  # ConfigError for an unknown family
    names = [procedural.env_name(args.family, seed) for seed in seeds]
    if args.stats:
        _print_family_stats(args.family, seeds, stats, args.json)
    if args.render:
        _render_family(args.family, names, args.render)
    if args.stats or args.render:
        return
    rows = [{"name": n, **{k: v[i] for k, v in stats.items() if k != "turns"}} for i, n in enumerate(names)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'name':<{len(names[-1])}}  {'dof':>3}  {'limbs':>5}  {'depth':>5}  branch points")
    for r in rows:
        print(f"{r['name']}  {r['dof']:>3}  {r['limbs']:>5}  {r['depth']:>5}  {r['branch_points']:>5}")


def _print_family_stats(family: str, seeds: range, stats: dict, as_json: bool) -> None:
    import numpy as np

    summary = {
        k: {"mean": float(np.mean(v)), "min": float(np.min(v)), "max": float(np.max(v))} for k, v in stats.items()
    }
    dof = np.array(stats["dof"])
    histogram = {
        f"{lo}-{lo + 1}" if lo < 20 else "20": int(np.sum((dof >= lo) & (dof <= lo + 1))) for lo in range(4, 21, 2)
    }
    if as_json:
        print(json.dumps({"family": family, "bodies": len(seeds), "summary": summary, "dof_histogram": histogram}))
        return
    print(f"procwalker-{family}: {len(seeds)} bodies, seeds {seeds.start}..{seeds.stop - 1}")
    print("degrees of freedom (actuated hinges):")
    for label, count in histogram.items():
        print(f"  {label:>5}  {'#' * round(40 * count / len(seeds)):<40}  {count}")
    labels = {
        "dof": "degrees of freedom",
        "limbs": "limbs",
        "depth": "depth (links, torso to furthest tip)",
        "branch_points": "branch points (>= 2 child links)",
        "turns": "turned limbs (fraction)",
    }
    print(f"  {'':<38}  {'mean':>6}  {'min':>5}  {'max':>5}")
    for key, label in labels.items():
        s = summary[key]
        print(f"  {label:<38}  {s['mean']:>6.2f}  {s['min']:>5.2f}  {s['max']:>5.2f}")


def _render_family(family: str, names: list[str], out: str) -> None:
    from pathlib import Path

    import numpy as np
    from tqdm import tqdm

    from tdm_dist import envs
    from tdm_dist.envs import procedural, render

    def settled_picture(name: str) -> np.ndarray:
        env = envs.make(name, seed=0)
        env.reset(seed=0)
        for _ in range(40):  # one second without torque: the body comes to rest on the floor
            env.step(np.zeros(env.spec.act_dim))
        return render.picture(env)

    out_dir = Path(out)
    for name in tqdm(names, desc=f"rendering {family}", unit="body"):
        render.save_png(settled_picture(name), out_dir / f"{name}.png")
    sheet = {
        f: [(procedural.env_name(f, s), settled_picture(procedural.env_name(f, s))) for s in range(3)]
        for f in procedural.FAMILIES
    }
    render.overview_sheet(sheet, out_dir / "overview.png")
    print(f"wrote {len(names)} pictures and overview.png (the four families, seeds 0-2) to {out_dir}")


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


def _cmd_demo(args: argparse.Namespace) -> None:
    from tdm_dist.demo import DemoConfig, print_summary, run_demo

    names = (
        *("out", "seed", "data_episodes", "data_steps", "train_steps"),
        *("samples", "horizon", "replan_every", "tdm_planner", "sigma", "episodes", "steps"),
    )
    fields = {k: getattr(args, k) for k in names}
    print_summary(run_demo(DemoConfig(**{k: v for k, v in fields.items() if v is not None}), address=args.address))


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
        steps=args.steps,
    )
    result = collect(cfg, address=args.address)
    what = args.env if result["envs"] == 1 else f"each of {result['envs']} envs"
    if result["collected"] == 0:
        print(f"{args.out}: all {args.episodes} episodes of {what} are already there; nothing to do")
        return
    print(
        f"collected {result['collected']} episodes ({args.episodes} of {what}) into {args.out} "
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

    keys = (
        "model",
        "preset",
        "context",
        "steps",
        "batch_size",
        "lr",
        "warmup_steps",
        "precision",
        "workers",
        "eval_every",
        "seed",
    )
    fields = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    if init_from:  # fine-tuning goes on with the checkpoint's kind of model
        from tdm_dist.learner.checkpoint import checkpoint_kind

        fields["model"] = checkpoint_kind(init_from)
    return TrainConfig(data=args.data, out=args.out, init_from=init_from, **fields)


def _cmd_train(args: argparse.Namespace) -> None:
    from tdm_dist.learner.train import train

    result = train(_train_config(args, init_from=getattr(args, "from_checkpoint", None)), address=args.address)
    val = f"val loss {result['val/loss']:.3f}"
    if "val/unigram_nll" in result:
        val = f"val nll {result['val/nll']:.3f} (unigram baseline {result['val/unigram_nll']:.3f})"
    print(f"trained {result['step']} steps: train loss {result['train/loss']:.3f}, {val}")
    print(f"checkpoint {result['checkpoint']}")


def _model_of(args: argparse.Namespace) -> str:
    """`tdm eval --model`, by default the kind of model its --ckpt holds (a TDM or a baseline)."""
    if getattr(args, "model", None):
        return args.model
    if args.ckpt:
        from tdm_dist.learner.checkpoint import checkpoint_kind

        return checkpoint_kind(args.ckpt)
    return "tdm"


def _eval_config(args: argparse.Namespace, samples: int | None = None, horizon: int | None = None):
    """The EvalConfig of `tdm eval`'s arguments (`tdm sweep` passes one of its K and N)."""
    from tdm_dist.planning.optimizers import PlannerConfig
    from tdm_dist.runtime.evaluate import EvalConfig

    samples = args.samples if samples is None else samples
    planner = PlannerConfig(
        kind=args.planner,
        samples=samples,
        horizon=args.horizon if horizon is None else horizon,
        beta=args.beta,
        variance=args.variance,
        sigma=args.sigma,
        iterations=args.iterations,
        elites=min(args.elites, samples) if args.planner == "cem" else args.elites,
        replan_every=args.replan_every,
    )
    return EvalConfig(
        env=args.env,
        model=_model_of(args),
        checkpoint=args.ckpt,
        policy=getattr(args, "policy", "mpc"),
        planner=planner,
        objective=args.objective,
        greedy=args.greedy,
        episodes=args.episodes,
        agents=args.agents,
        steps=args.steps,
        seed=args.seed,
        servers=args.servers,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        prompt=args.prompt,
    )


def print_result(result: dict) -> None:
    """The result table of ``tdm eval``."""
    p = result["settings"]["planner"]
    what = "BC policy" if result["policy"] == "bc" else f"{p['kind']} K={p['samples']} N={p['horizon']}"
    print(f"{result['env']}  model={result['model']}  {what}  episodes={len(result['returns'])}")
    print(f"  mean return   {result['mean_return']:.1f} ± {result['ci68']:.1f} (68% CI)")
    print(f"  per episode   {', '.join(f'{r:.1f}' for r in result['returns'])}")
    print(
        f"  env steps/s   {result['env_steps_per_s']:.1f}   (wall {result['wall_s']:.0f} s, reruns {result['reruns']})"
    )
    if result["checkpoint"]:
        print(f"  checkpoint    {result['checkpoint']}")


def _cmd_eval(args: argparse.Namespace) -> None:
    from tdm_dist.runtime.evaluate import evaluate

    result = evaluate(_eval_config(args), address=args.address)
    print_result(result)
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")


def _cmd_prederr(args: argparse.Namespace) -> None:
    from tdm_dist.prederr import PredErrConfig, prediction_errors, print_table, write_results
    from tdm_dist.sweep import parse_models

    if not (args.models or args.ckpt):
        raise ConfigError("name the models to compare: --ckpt CKPT and/or --models tdm,NAME=CKPT,...")
    models = parse_models(args.models or "tdm", args.ckpt)
    references = [name for name, ckpt in models.items() if ckpt is None]
    if references:
        raise ConfigError(f"prederr compares learned models to the simulator: {', '.join(references)} predicts nothing")
    cfg = PredErrConfig(
        env=args.env, models=models, horizon=args.horizon, runs=args.runs, beta=args.beta, variance=args.variance,
        greedy=args.greedy, seed=args.seed, out=args.out,
    )  # fmt: skip
    result = prediction_errors(cfg)
    plot = write_results(result, cfg.out)
    print_table(result)
    print(f"wrote {cfg.out}/prederr.json, prederr.csv and {plot.name}")


def _cmd_sweep(args: argparse.Namespace) -> None:
    from tdm_dist.sweep import SweepConfig, parse_models, print_table, run_sweep

    models = args.models or ("tdm" if args.ckpt else "")
    if not models:
        raise ConfigError("name the models to sweep: --ckpt CKPT and/or --models tdm,ground-truth,random,NAME=CKPT")
    cfg = SweepConfig(
        base=_eval_config(args, samples=max(args.samples), horizon=max(args.horizons)),
        models=parse_models(models, args.ckpt),
        horizons=args.horizons,
        samples=args.samples,
        out=args.out,
        concurrent=args.concurrent,
        search=args.search,
        trials=args.trials,
    )
    rows = run_sweep(cfg, address=args.address)
    print_table(rows)
    print(f"wrote {cfg.out}/sweep.csv, sweep.json and sweep.png")


def _cmd_run(args: argparse.Namespace) -> None:
    from tdm_dist.experiment import Experiment, run_experiment

    experiment = Experiment.load(args.experiment, args.scale)
    report = run_experiment(experiment, out=args.out, address=args.address)
    print(f"\nreport: {report}")


def _cmd_submit(args: argparse.Namespace) -> None:
    import yaml

    from tdm_dist.runtime.cluster import submit_experiment

    try:
        runtime_env = yaml.safe_load(args.runtime_env) if args.runtime_env else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--runtime-env is not valid YAML: {' '.join(str(e).split())}") from None
    if runtime_env is not None and not isinstance(runtime_env, dict):
        raise ConfigError(f"--runtime-env must be a YAML mapping, got {args.runtime_env!r}")
    try:
        job_id, status = submit_experiment(
            args.experiment, args.address, args.scale, args.out, runtime_env, follow=not args.no_follow
        )
    except KeyboardInterrupt:
        raise KeyboardInterrupt("the job goes on running on the cluster; `ray job stop ID` stops it") from None
    if status not in ("SUCCEEDED", "RUNNING"):
        raise TdmError(f"Ray job {job_id} ended {status}; `ray job logs {job_id}` shows its output")


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, e.g. 5,10,25; got {text!r}") from None


def write_json(path: str, payload: dict) -> None:
    """``payload`` as indented JSON at ``path`` (folders created), written whole or not at all."""
    import os
    from pathlib import Path

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, target)


def _add_planner_arguments(p: argparse.ArgumentParser, sweep: bool = False) -> None:
    g = p.add_argument_group("planner")
    g.add_argument("--planner", default="shooting", help="shooting (default), cem or proposal")
    if sweep:
        g.add_argument("--samples", "-K", type=_int_list, default=[128], help="values of K (default 128)")
        g.add_argument(
            "--horizons", "-N", type=_int_list, default=[5, 10, 25, 50, 100], help="values of N (default 5,...,100)"
        )
    else:
        g.add_argument("--samples", "-K", type=int, default=128, help="candidate action sequences K (default 128)")
        g.add_argument("--horizon", "-N", type=int, default=25, help="planning horizon N in env steps (default 25)")
    g.add_argument(
        "--beta", type=float, default=2.0, help="colored-noise exponent: 2 Brownian (default), 1 pink, 0 white"
    )
    g.add_argument("--variance", type=float, default=2.0, help="noise variance per action entry (default 2)")
    g.add_argument("--sigma", type=float, default=0.3, help="proposal: std of the noise on the BC actions")
    g.add_argument("--iterations", type=int, default=1, help="cem: refit rounds per step")
    g.add_argument("--elites", type=int, default=10, help="cem: elite candidates")
    g.add_argument("--replan-every", type=int, default=1, help="env steps between plans (default 1)")
    g.add_argument("--objective", default="auto", help="auto, obs (reward from predicted obs) or predicted (rewards)")
    g.add_argument("--greedy", action="store_true", help="decode imagined tokens greedily instead of sampling")


def _add_train_arguments(p: argparse.ArgumentParser, finetune: bool) -> None:
    p.add_argument("--data", required=True, help="Parquet dataset written by `tdm collect`")
    p.add_argument("--out", required=True, help="run directory; re-running with the same --out resumes")
    if not finetune:
        from tdm_dist.baselines import NAMES

        p.add_argument(
            "--model",
            default=None,
            choices=("tdm", *NAMES),
            metavar="NAME",
            help=f"tdm (default), or a baseline of paper §5.1: {', '.join(NAMES)}",
        )
        p.add_argument("--preset", default=None, help="TDM preset: tiny (default), small, base, large")
        p.add_argument("--context", type=int, default=None, help="tokens per window (default: the preset's)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default 2000)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="windows (TDM) or segments (baselines) per step and worker (default 16)",
    )
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 1e-3)")
    p.add_argument("--warmup-steps", type=int, default=None, help="linear warmup steps (default 100)")
    from tdm_dist.learner.train import PRECISIONS

    p.add_argument(
        "--precision",
        default=None,
        choices=PRECISIONS,
        help="fp32 (default); bf16: forward and backward under bfloat16 autocast, weights kept in fp32; "
        "auto: bf16 where the GPU or CPU computes in it natively",
    )
    p.add_argument("--workers", type=int, default=None, help="Ray Train workers (default 2)")
    p.add_argument("--eval-every", type=int, default=None, help="steps between validation and checkpoints")
    p.add_argument("--seed", type=int, default=None)
    _add_address(p)


def _add_address(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local instance)")


def build_parser() -> argparse.ArgumentParser:
    from tdm_dist.demo import TDM_PLANNERS, DemoConfig

    parser = argparse.ArgumentParser(
        prog="tdm",
        description="Transformer dynamics models (Schubert et al. 2023) for model-predictive control, on Ray.",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("envs", help="list every environment with its dimensions, or a procedural walker family")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--family", default=None, help="a procedural walker family: line, chain, bush or tree")
    p.add_argument("--count", type=int, default=5, help="bodies of the family (seeds --first, --first + 1, ...)")
    p.add_argument("--first", type=int, default=0, help="first seed of the family")
    p.add_argument("--stats", action="store_true", help="structure statistics of the family's bodies")
    p.add_argument("--render", metavar="DIR", default=None, help="write a PNG per body and overview.png to DIR")
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

    p = sub.add_parser(
        "demo",
        help="the main job: expert data -> tiny TDM -> MPC with the TDM vs ground truth vs random (~10 min, 2 CPUs)",
    )
    demo = DemoConfig()  # its defaults, for the help
    p.add_argument(
        "--out",
        default=None,
        help=f"output folder (default {demo.out}); a re-run with the same data and training settings reuses its "
        "data and model",
    )
    p.add_argument(
        "--data-episodes", type=int, default=None, help=f"expert episodes to train on (default {demo.data_episodes})"
    )
    p.add_argument(
        "--data-steps", type=int, default=None, help=f"env steps per expert episode (default {demo.data_steps})"
    )
    p.add_argument("--train-steps", type=int, default=None, help=f"optimizer steps (default {demo.train_steps})")
    p.add_argument("--samples", "-K", type=int, default=None, help=f"planner samples K (default {demo.samples})")
    p.add_argument("--horizon", "-N", type=int, default=None, help=f"planner horizon N (default {demo.horizon})")
    p.add_argument(
        "--replan-every", type=int, default=None, help=f"env steps between plans (default {demo.replan_every})"
    )
    p.add_argument(
        "--tdm-planner",
        choices=TDM_PLANNERS,
        default=None,
        help=f"how the TDM plans (default {demo.tdm_planner}: its BC actions plus noise, §5.1.1; shooting: random "
        "shooting like the ground truth)",
    )
    p.add_argument("--sigma", type=float, default=None, help=f"proposal noise std (default {demo.sigma})")
    p.add_argument(
        "--episodes", type=int, default=None, help=f"evaluation episodes per model (default {demo.episodes})"
    )
    p.add_argument("--steps", type=int, default=None, help=f"env steps per evaluation episode (default {demo.steps})")
    p.add_argument("--seed", type=int, default=None)
    _add_address(p)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("collect", help="collect expert episodes into a Parquet dataset (resumable)")
    p.add_argument(
        "--env", required=True, help="environment name (see `tdm envs`), or several: a,b or procwalker-chain-0..99"
    )
    p.add_argument("--episodes", type=int, required=True, help="episode ids 0..N-1 of each env end up in the dataset")
    p.add_argument("--out", required=True, help="dataset directory")
    p.add_argument("--expert", default="gt-mpc", help="gt-mpc (ground-truth MPC, default), random, or rllib:CHECKPOINT")
    p.add_argument("--action-noise", type=float, default=0.0, help="std of noise added to expert actions")
    p.add_argument("--samples", type=int, default=None, help="planner samples K (gt-mpc)")
    p.add_argument("--horizon", type=int, default=None, help="planner horizon N (gt-mpc)")
    p.add_argument("--steps", type=int, default=None, help="env steps per episode (default: the whole episode)")
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

    p = sub.add_parser(
        "train", help="train a TDM (or a baseline, --model) on a dataset with Ray Train (resumes an existing --out)"
    )
    _add_train_arguments(p, finetune=False)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("finetune", help="continue training a checkpoint on new data, with its own schedule")
    p.add_argument("--from", dest="from_checkpoint", required=True, help="checkpoint file or run directory")
    _add_train_arguments(p, finetune=True)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="mean return of MPC (or BC) with a model over episodes, on MPCAgent actors")
    p.add_argument("--env", required=True, help="environment name (see `tdm envs`)")
    p.add_argument(
        "--model",
        default=None,
        help="ground-truth or random; or the learned model of --ckpt: tdm or a baseline (default: the checkpoint's)",
    )
    p.add_argument("--ckpt", default=None, help="TDM or baseline checkpoint: file, checkpoint folder or run folder")
    p.add_argument("--policy", default="mpc", help="mpc (plan every step, default) or bc (the TDM's own actions)")
    _add_planner_arguments(p)
    _add_episode_arguments(p, agents=4)
    p.add_argument("--json", default=None, metavar="PATH", help="also write the result as JSON")
    _add_address(p)
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser(
        "prederr", help="RMS error of models' open-loop predictions against the simulator over the horizon (App. G)"
    )
    p.add_argument("--env", required=True, help="environment name (see `tdm envs`)")
    p.add_argument("--ckpt", default=None, help="a TDM or baseline checkpoint (the model 'tdm' of --models)")
    p.add_argument("--models", default=None, help="lines of the plot: tdm,NAME=CHECKPOINT,... (default: tdm)")
    p.add_argument("--horizon", type=int, default=50, help="predict N steps ahead (default 50)")
    p.add_argument("--runs", type=int, default=30, help="random initial states; the plot shows the median (default 30)")
    p.add_argument("--beta", type=float, default=2.0, help="exponent of the action noise (default 2, Brownian)")
    p.add_argument("--variance", type=float, default=2.0, help="variance of the action noise (default 2)")
    p.add_argument("--greedy", action="store_true", help="the TDM decodes its most likely tokens")
    p.add_argument("--seed", type=int, default=0, help="run i starts from seed*1e6 + i")
    p.add_argument("--out", default="runs/prederr", help="folder of prederr.json, .csv and .png")
    p.set_defaults(func=_cmd_prederr)

    p = sub.add_parser(
        "sweep",
        help="MPC return over a grid of K and N (or an Optuna search) as Ray Tune trials; resumes an interrupted sweep",
    )
    p.add_argument("--env", required=True, help="environment name (see `tdm envs`)")
    p.add_argument("--ckpt", default=None, help="the TDM's checkpoint (the model 'tdm')")
    p.add_argument(
        "--models", default=None, help="lines of the plot: tdm,ground-truth,random,NAME=CHECKPOINT (default: tdm)"
    )
    _add_planner_arguments(p, sweep=True)
    _add_episode_arguments(p, agents=2)
    p.add_argument("--out", default="runs/sweep", help="results and Tune state; the same --out resumes")
    p.add_argument("--concurrent", type=int, default=1, help="trials running at once (default 1)")
    p.add_argument("--search", default="grid", help="grid (default) or optuna (Optuna + ASHA over the planner)")
    p.add_argument("--trials", type=int, default=16, help="optuna: trials to run (default 16)")
    _add_address(p)
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser(
        "run", help="run a paper experiment (experiments/*.yaml): collect -> train -> sweep -> report; resumes"
    )
    p.add_argument("experiment", help="experiment file, e.g. experiments/specialist_cartpole.yaml")
    p.add_argument("--scale", default="ci", help="ci (2 CPUs, default) or paper (the paper's sizes, for a cluster)")
    p.add_argument("--out", default=None, help="run folder (default runs/<experiment>-<scale>); the same --out resumes")
    _add_address(p)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("submit", help="submit `tdm run EXPERIMENT` as a Ray job to a cluster and follow its logs")
    p.add_argument("experiment", help="experiment file, e.g. experiments/specialist_cartpole.yaml")
    p.add_argument("--address", required=True, help="the cluster's dashboard, e.g. http://HEAD:8265")
    p.add_argument("--scale", default="ci", help="ci (default) or paper")
    p.add_argument(
        "--out", default=None, help="run folder on the cluster (default: the absolute path of runs/<name>-<scale> here)"
    )
    p.add_argument("--runtime-env", default=None, help="extra runtime_env as YAML, e.g. '{pip: [somepackage]}'")
    p.add_argument("--no-follow", action="store_true", help="return once submitted instead of following the logs")
    p.set_defaults(func=_cmd_submit)
    return parser


def _add_episode_arguments(p: argparse.ArgumentParser, agents: int) -> None:
    p.add_argument("--episodes", type=int, default=4, help="episodes per evaluation (default 4)")
    p.add_argument("--agents", type=int, default=agents, help=f"MPCAgent actors playing at once (default {agents})")
    p.add_argument("--steps", type=int, default=None, help="env steps per episode (default: 1000)")
    p.add_argument("--seed", type=int, default=0, help="episode i starts from seed*1e6 + i")
    p.add_argument("--servers", type=int, default=1, help="ModelServer actors per TDM (default 1)")
    p.add_argument("--max-batch", type=int, default=16, help="requests merged into one decode (default 16)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="longest wait for a batch to fill (default 5)")
    p.add_argument("--prompt", default=None, help="dataset whose first episode of --env prompts the TDM")


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
    except KeyboardInterrupt as e:
        why = f": {e}" if str(e) else ""
        print(f"tdm {args.command}: interrupted after {time.perf_counter() - start:.0f} s{why}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
