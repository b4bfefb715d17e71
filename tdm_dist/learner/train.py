"""The learner: a TDM trained with next-token NLL on Ray Train (``TorchTrainer``, DDP), fed by Ray Data.

Each worker reads its shard of the training windows (``ray.train.get_dataset_shard``), takes AdamW steps
with warmup and cosine decay and gradient clipping, and every ``eval_every`` steps measures the
validation NLL and reports a checkpoint through ``ray.train.report``. A worker that dies is replaced
(``FailureConfig``) and training continues from the last checkpoint; re-running the same command with
the same ``--out`` resumes the run. ``finetune`` starts from a checkpoint's weights with its own schedule.

``TrainConfig.model`` names a baseline of ``tdm_dist.baselines`` instead: the same loop then reads segments
of one environment's episodes (``data.dataset.make_segment_datasets``) and minimizes the baseline's own loss,
its normalization statistics fitted on the training episodes before the first step. Both kinds of model sit
in an objective module whose ``forward`` returns the loss, so that DDP synchronizes their gradients alike.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from tdm_dist.errors import ConfigError, TdmError
from tdm_dist.learner.checkpoint import load_checkpoint, model_kind, resolve_checkpoint, save_checkpoint
from tdm_dist.model import TDM, TDMConfig, preset
from tdm_dist.model.transformer import token_nll
from tdm_dist.runtime.cluster import init_ray

PRECISIONS = ("fp32", "bf16", "auto")  # TrainConfig.precision: of the forward and backward passes


def computes_in_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 natively: a CUDA GPU that supports it, or a CPU with AVX512-BF16 or
    AMX. Elsewhere bfloat16 is emulated, and slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether ``precision`` trains under bfloat16 autocast on ``device`` ("auto": where it computes in bf16)."""
    return precision == "bf16" or (precision == "auto" and computes_in_bf16(device))


@dataclass
class TrainConfig:
    data: str  # Parquet dataset written by `tdm collect`
    out: str  # run directory: checkpoints, TensorBoard logs, model.pt of the last checkpoint
    model: str = "tdm"  # "tdm", or a baseline of tdm_dist.baselines (mlp, mlp-tokin-delta, pets, rssm, ...)
    preset: str = "tiny"  # TDM preset (tiny, small, base, large)
    context: int | None = None  # tokens per training window and model context (default: the preset's)
    steps: int = 2000  # optimizer steps
    batch_size: int = 16  # windows per step per worker
    lr: float = 1e-3  # peak learning rate
    min_lr_ratio: float = 0.1  # final learning rate as a fraction of the peak (cosine decay)
    warmup_steps: int = 100  # linear warmup steps
    weight_decay: float = 0.1  # AdamW weight decay
    grad_clip: float = 1.0  # max global gradient norm
    dropout: float = 0.0  # model dropout
    precision: str = "fp32"  # "bf16": forward and backward under bfloat16 autocast (weights and optimizer stay fp32);
    # "auto": bf16 where the hardware computes in it (computes_in_bf16). Validation stays fp32: NLLs compare across runs
    workers: int = 2  # Ray Train workers (DDP ranks)
    cpus_per_worker: float = 1.0  # CPUs reserved per worker
    use_gpu: bool | None = None  # one GPU per worker; default: when the cluster has GPUs
    eval_every: int = 250  # steps between validation + checkpoint
    val_batches: int = 8  # validation batches per worker per evaluation
    val_fraction: float = 0.1  # episodes held out for validation
    max_failures: int = 3  # worker-failure restarts before giving up
    keep_checkpoints: int = 2  # checkpoints kept on disk
    seed: int = 0  # seeds the model init, the split and the windows
    init_from: str | None = None  # fine-tuning: start from this checkpoint's weights
    model_overrides: dict = field(default_factory=dict)  # extra TDMConfig fields, by name

    def model_config(self) -> TDMConfig:
        overrides = dict(self.model_overrides, dropout=self.dropout)
        if self.context is not None:
            overrides["context"] = self.context
        return preset(self.preset, **overrides)

    def check(self) -> None:
        from tdm_dist.baselines import NAMES

        if self.model != "tdm" and self.model not in NAMES:
            raise ConfigError(f"unknown model {self.model!r}; known: tdm, {', '.join(NAMES)}")
        for name in ("steps", "batch_size", "workers", "eval_every", "val_batches"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.context is not None and self.context < 2:
            raise ConfigError(f"context must be >= 2 tokens (a token and its target), got {self.context}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        self.model_config()  # validates the preset and overrides


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to 1, then cosine decay to ``min_lr_ratio`` at ``cfg.steps``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _batches(shard, batch_size: int, seed: int):
    """Training batches forever. A pass over the shard holds the windows of as many epochs as training needs
    (each epoch cut afresh); a local shuffle buffer mixes windows of many episodes into each batch."""
    while True:
        empty = True
        for batch in shard.iter_torch_batches(
            batch_size=batch_size, drop_last=True, local_shuffle_buffer_size=64 * batch_size, local_shuffle_seed=seed
        ):
            empty = False
            yield batch
        if empty:
            raise ConfigError(f"a training shard has fewer windows than one batch of {batch_size}")


class _TDMObjective(torch.nn.Module):
    """The TDM's next-token NLL as a module, so that DDP sees the loss computed in ``forward``."""

    unit = "tok"  # what the throughput counts

    def __init__(self, model: TDM):
        super().__init__()
        self.model = model

    def forward(self, batch: dict, reduction: str = "mean"):
        tokens, n, m = batch["tokens"], batch["obs_dim"], batch["act_dim"]
        return token_nll(self.model(tokens[:, :-1], n, m), tokens, n, m, reduction)

    def summed(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed validation loss, count): the NLL of every counted token."""
        return self(batch, "sum")

    def items(self, batch: dict) -> int:
        return batch["tokens"].numel()


class _BaselineObjective(torch.nn.Module):
    """A baseline's own loss (``Baseline.loss``) over segment batches, as a module for DDP."""

    unit = "seg"

    def __init__(self, model, seed: int):
        super().__init__()
        self.model = model
        self.generator = torch.Generator().manual_seed(seed)  # PETS's bootstraps, the RSSM's latent samples

    def forward(self, batch: dict):
        return self.model.loss(self.model.batch(batch), self.generator)

    def summed(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss x segments, segments): the mean loss per segment over many batches."""
        count = batch["obs"].shape[0]
        return self(batch) * count, torch.tensor(float(count), device=batch["obs"].device)

    def items(self, batch: dict) -> int:
        return batch["obs"].shape[0]


def optimizer(parameters, cfg: TrainConfig):
    """(AdamW, warmup-and-cosine LambdaLR) of ``cfg``: the learner's optimizer, for every training loop."""
    opt = torch.optim.AdamW(parameters, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))


def optimizer_step(objective, batch: dict, opt, sched, grad_clip: float, bf16: bool) -> torch.Tensor:
    """One step on ``batch``: the loss (under bfloat16 autocast when ``bf16``), backward, gradient clipping, the
    optimizer and the schedule. Returns the loss, unsynchronized. Every training loop takes its steps here."""
    device = next(objective.parameters()).device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = objective(batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(objective.parameters(), grad_clip)
    opt.step()
    sched.step()
    return loss


def _validation_loss(objective, shard, batches: int, batch_size: int, device) -> tuple[float, float]:
    """(summed loss, count) over up to ``batches`` validation batches of this worker's shard, summed over
    every worker's: for the TDM the NLL of every counted token, for a baseline its loss per segment."""
    total, count = torch.zeros((), device=device), torch.zeros((), device=device)
    objective.eval()
    with torch.no_grad():
        for i, batch in enumerate(shard.iter_torch_batches(batch_size=batch_size)):
            if i >= batches:
                break
            s, c = objective.summed({k: v.to(device) for k, v in batch.items()})
            total, count = total + s, count + c
    objective.train()
    if torch.distributed.is_initialized():  # average over every worker's shard
        both = torch.stack([total, count.to(total.dtype)])
        torch.distributed.all_reduce(both)
        total, count = both[0], both[1]
    return float(total), float(count)


def _objective(config: dict, cfg: TrainConfig, rank: int) -> torch.nn.Module:
    """The model of this run (``config["model_config"]``, or a baseline with its initial normalization), wrapped
    in the objective the loop minimizes."""
    if cfg.model == "tdm":
        return _TDMObjective(TDM(TDMConfig(**config["model_config"])))
    from tdm_dist.baselines import rebuild

    model = rebuild(cfg.model, config["model_config"])
    for name, value in config["initial_state"].items():  # fit_normalization's statistics, the same on every rank
        model.get_buffer(name).copy_(value)
    return _BaselineObjective(model, cfg.seed + rank)


def train_loop_per_worker(config: dict) -> None:
    """One DDP rank: read the config, resume or initialize, then step, evaluate and checkpoint."""
    import ray.train
    import ray.train.torch

    cfg = TrainConfig(**config["train"])
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    torch.manual_seed(cfg.seed + rank)
    if not torch.cuda.is_available():
        torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))

    objective = _objective(config, cfg, rank)
    model = objective.model
    state = None
    resume = ray.train.get_checkpoint()
    if resume:  # a restarted worker or a re-run: continue where the last checkpoint left off
        with resume.as_directory() as d:
            state = load_checkpoint(d)
        model.load_state_dict(state["model"])
    elif cfg.init_from:  # fine-tuning: the weights only, a fresh schedule
        model.load_state_dict(load_checkpoint(cfg.init_from)["model"])
    wrapped = ray.train.torch.prepare_model(objective)  # on the worker's device, DDP-wrapped
    device = ray.train.torch.get_device()
    # The optimizer is built (and its state loaded) after the move, so its state lives on the same device.
    opt, sched = optimizer(wrapped.parameters(), cfg)
    step = 0
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step = state["step"]
        if rank == 0:
            _say(f"resuming from the checkpoint of step {step}")

    tb = None
    if rank == 0:
        from tensorboardX import SummaryWriter

        tb = SummaryWriter(str(Path(cfg.out) / "tensorboard"))
    train_batches = _batches(ray.train.get_dataset_shard("train"), cfg.batch_size, cfg.seed + rank)
    val_shard = ray.train.get_dataset_shard("val")
    bf16 = use_bf16(cfg.precision, device)
    if rank == 0 and cfg.precision == "auto":
        _say(f"precision auto: {'bf16' if bf16 else 'fp32'} on {device}")
    tic, seen, losses = time.perf_counter(), 0, []
    while step < cfg.steps:
        batch = {k: v.to(device) for k, v in next(train_batches).items()}
        loss = optimizer_step(wrapped, batch, opt, sched, cfg.grad_clip, bf16)
        step += 1
        losses.append(loss.detach())  # no host sync per step; read at evaluation
        seen += objective.items(batch) * ctx.get_world_size()
        if step % cfg.eval_every and step != cfg.steps:
            continue
        total, count = _validation_loss(objective, val_shard, cfg.val_batches, cfg.batch_size, device)
        elapsed = time.perf_counter() - tic
        metrics = {
            "step": step,
            "train/loss": float(torch.stack(losses).mean()),
            "val/loss": total / max(count, 1.0),
            "train/lr": sched.get_last_lr()[0],
            f"perf/{objective.unit}_per_s": seen / elapsed,
        }
        if cfg.model == "tdm":
            metrics["val/nll"] = metrics["val/loss"]
        tic, seen, losses = time.perf_counter(), 0, []
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                save_checkpoint(
                    tmp,
                    model,
                    optimizer=opt.state_dict(),
                    scheduler=sched.state_dict(),
                    step=step,
                    train_config=asdict(cfg),
                    env_specs=config["env_specs"],
                    metrics=metrics,
                )
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
                for key, value in metrics.items():
                    if key != "step":
                        tb.add_scalar(key, value, step)
                tb.flush()
                _say(
                    f"step {step}/{cfg.steps}  loss {metrics['train/loss']:.3f}  val loss {metrics['val/loss']:.3f}  "
                    f"lr {metrics['train/lr']:.2e}  {metrics[f'perf/{objective.unit}_per_s']:.0f} {objective.unit}/s"
                )
            ray.train.report(metrics, checkpoint=checkpoint)
    if tb is not None:
        tb.close()


def _say(line: str) -> None:
    """A progress line from a worker, on the process's own stdout, which Ray forwards to the driver. Ray Train's
    patched ``print`` would show it twice there: written to the redirected stream and logged by the root logger."""
    print(line, file=sys.__stdout__, flush=True)


def _epochs_per_pass(summary: dict, cfg: TrainConfig, window_tokens: int) -> int:
    """Epochs of windows one pass over the train dataset must hold for ``cfg.steps`` steps of every worker.

    Ray Data re-runs a pipeline identically on each pass, so fresh windows per epoch come from folding the
    epochs into one pass. ``summary`` is ``data.summarize``'s; the window count is an estimate.
    """
    tokens = sum(s["steps"] * (s["obs_dim"] + s["act_dim"] + 2) for s in summary.values())
    windows_per_epoch = max(1, tokens // window_tokens) * (1 - cfg.val_fraction)
    return math.ceil(cfg.steps * cfg.batch_size * cfg.workers / windows_per_epoch)


def _check_resumable(out: Path, kind: str, model_config: dict) -> None:
    """An existing run directory is resumed (Ray Train restores by storage path and name): its checkpoints
    must hold the same model, else every worker would fail to load them."""
    runs = out / "train"
    if not runs.is_dir() or not list(runs.rglob("model.pt")):
        return
    payload = load_checkpoint(runs)
    saved, saved_kind = payload["model_config"], model_kind(payload)
    if saved_kind != kind:
        raise ConfigError(f"{out} holds a run of a {saved_kind} model, not a {kind}; use a new --out")
    if saved != model_config:
        changed = {k: (saved.get(k), v) for k, v in model_config.items() if saved.get(k) != v}
        raise ConfigError(
            f"{out} holds a run of another model ({', '.join(f'{k}: {a} -> {b}' for k, (a, b) in changed.items())}); "
            "re-running resumes it, so use a new --out for a different model"
        )


def _unwrap_worker_error(error: Exception) -> Exception:
    """The first TdmError a Ray Train worker raised, if any, so the CLI reports it without a traceback."""
    seen, todo = set(), [error]
    while todo:
        e = todo.pop()
        if id(e) in seen or e is None:
            continue
        seen.add(id(e))
        if isinstance(e, TdmError):
            return e
        todo += [e.__cause__, e.__context__, getattr(e, "cause", None)]
        failures = getattr(e, "worker_failures", None)  # WorkerGroupError: {rank: exception}
        if isinstance(failures, dict):
            todo += failures.values()
    return error


def unigram_nll(train_windows: dict, val_windows: dict) -> float:
    """NLL per token of the validation windows under the training windows' token frequencies (add-one
    smoothed), over the tokens the model's loss counts: the baseline a model must beat to have learned
    anything beyond token statistics. Arguments are ``{tokens [W, T], obs_dim [W], act_dim [W]}``."""
    from tdm_dist.model.transformer import token_kinds
    from tdm_dist.tokenizer import PAD, VOCAB_SIZE, Kind

    def counted(w: dict) -> torch.Tensor:
        targets = w["tokens"][:, 1:]
        _, kind = token_kinds(torch.arange(1, w["tokens"].shape[1]), w["obs_dim"], w["act_dim"])
        return targets[(kind != int(Kind.SEP)) & (targets != PAD)]

    counts = torch.bincount(counted(train_windows), minlength=VOCAB_SIZE).double() + 1.0
    log_p = (counts / counts.sum()).log()
    return float(-log_p[counted(val_windows)].mean())


def train(cfg: TrainConfig, address: str | None = None) -> dict:
    """Run (or resume) training; returns the final metrics and the path of the final ``model.pt``."""
    import ray
    import ray.data
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from tdm_dist.data import (
        DatasetConfig,
        in_memory_windows,
        make_datasets,
        read_specs,
        split_episodes,
        summarize,
        validate_dataset,
    )
    from tdm_dist.data.dataset import make_segment_datasets

    cfg.check()
    pretrained = None
    if cfg.init_from:  # fine-tuning keeps the pretrained architecture
        cfg.init_from = str(resolve_checkpoint(cfg.init_from).resolve())
        pretrained = load_checkpoint(cfg.init_from)
        if model_kind(pretrained) != cfg.model:
            raise ConfigError(f"{cfg.init_from} holds a {model_kind(pretrained)} model, not a {cfg.model}")
    validate_dataset(cfg.data)  # a corrupt file or bad episode stops here, naming it, before any work
    train_ids, val_ids = split_episodes(cfg.data, cfg.val_fraction, cfg.seed)
    if not train_ids or not val_ids:
        raise ConfigError(
            f"{cfg.data} has {len(train_ids) + len(val_ids)} episodes: training needs at least 2, one of them "
            "held out for validation"
        )
    env_specs = read_specs(cfg.data)
    summary = summarize(cfg.data)
    init_ray(address, min_cpus=cfg.workers * cfg.cpus_per_worker + 1)  # + 1 for the Ray Data tasks
    use_gpu = cfg.use_gpu if cfg.use_gpu is not None else ray.cluster_resources().get("GPU", 0) >= cfg.workers
    ray.data.DataContext.get_current().enable_progress_bars = False  # the step lines are the progress report
    loop_config: dict = {"env_specs": env_specs}
    if cfg.model == "tdm":
        if pretrained:
            model_cfg = TDMConfig(**pretrained["model_config"])
            cfg.context, cfg.preset, cfg.dropout = model_cfg.context, "from-checkpoint", model_cfg.dropout
        else:
            model_cfg = cfg.model_config()
        loop_config["model_config"] = asdict(model_cfg)
        _check_resumable(Path(cfg.out), "tdm", loop_config["model_config"])
        data_cfg = DatasetConfig(
            path=cfg.data,
            window_tokens=model_cfg.context,
            val_fraction=cfg.val_fraction,
            seed=cfg.seed,
            batch_size=cfg.batch_size,
            epochs=_epochs_per_pass(summary, cfg, model_cfg.context),
            shuffle=False,  # a global shuffle of every epoch's windows costs more than it buys; see _batches
        )
        train_ds, val_ds = make_datasets(data_cfg)
    else:
        model = _baseline(cfg, summary, pretrained)
        loop_config["model_config"] = asdict(model.cfg)
        _check_resumable(Path(cfg.out), cfg.model, loop_config["model_config"])
        length = model.segment_length
        # Only the buffers (the normalization statistics) travel: the weights start from the seed (DDP copies rank 0's
        # to every rank) or load from the checkpoint, and a 70M model's would cost 280 MB in every worker's config.
        loop_config["initial_state"] = {name: value.clone() for name, value in model.named_buffers()}
        steps = sum(s["steps"] for s in summary.values()) * (1 - cfg.val_fraction)
        epochs = math.ceil(cfg.steps * cfg.batch_size * cfg.workers / max(1.0, steps // length))
        train_ds, val_ds = make_segment_datasets(cfg.data, length, cfg.val_fraction, cfg.seed, epochs)
    val_ds = val_ds.materialize()  # one epoch, small; evaluations then do not re-read the files
    out = Path(cfg.out).resolve()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"train": {**asdict(cfg), "out": str(out)}, **loop_config},
        scaling_config=ScalingConfig(
            num_workers=cfg.workers, use_gpu=use_gpu, resources_per_worker={"CPU": cfg.cpus_per_worker}
        ),
        run_config=RunConfig(
            name="train",
            storage_path=str(out),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
        ),
        datasets={"train": train_ds, "val": val_ds},
        dataset_config=DataConfig(datasets_to_split=["train", "val"]),
    )
    try:
        result = trainer.fit()
    except Exception as e:
        raise _unwrap_worker_error(e) from None
    if result.checkpoint is None:
        raise ConfigError(f"training in {out} produced no checkpoint")
    final = out / "model.pt"
    with result.checkpoint.as_directory() as d:
        tmp = out / ".model.pt.tmp"
        tmp.write_bytes((Path(d) / "model.pt").read_bytes())
        os.replace(tmp, final)
    metrics = {**result.metrics, "checkpoint": str(final)}
    if cfg.model == "tdm":  # the NLL a model of token frequencies alone reaches
        windows = (in_memory_windows(cfg.data, dataclasses.replace(data_cfg, epochs=1), s) for s in ("train", "val"))
        metrics["val/unigram_nll"] = unigram_nll(*windows)
    return metrics


def _baseline(cfg: TrainConfig, summary: dict, pretrained: dict | None):
    """The baseline to train: fresh (seeded) or the pretrained one, with the normalization statistics of the
    training data (of up to 100,000 segments)."""
    from tdm_dist.baselines import build, rebuild
    from tdm_dist.data.dataset import in_memory_segments

    if len(summary) != 1:
        raise ConfigError(
            f"the {cfg.model} baseline models one environment, and {cfg.data} holds {len(summary)} "
            f"({', '.join(sorted(summary)[:5])}{', ...' if len(summary) > 5 else ''}); only the TDM trains "
            "on many"
        )
    spec = next(iter(summary.values()))  # data.summarize's: obs_dim, act_dim, ...
    torch.manual_seed(cfg.seed)
    if pretrained:
        model = rebuild(cfg.model, pretrained["model_config"])
        model.load_state_dict(pretrained["model"])
        if (model.obs_dim, model.act_dim) != (spec["obs_dim"], spec["act_dim"]):
            raise ConfigError(
                f"{cfg.init_from} models {model.obs_dim} observation and {model.act_dim} action entries, "
                f"{cfg.data} has {spec['obs_dim']} and {spec['act_dim']}"
            )
        return model  # fine-tuning keeps the pretrained normalization
    model = build(cfg.model, spec["obs_dim"], spec["act_dim"])
    segments = in_memory_segments(cfg.data, model.segment_length, cfg.val_fraction, cfg.seed, "train")
    model.fit_normalization(model.batch({k: torch.as_tensor(v[:100_000]) for k, v in segments.items()}))
    return model
