"""Data-parallel training: `TrainConfig`, the batch plan, `train_one_epoch`, `evaluate`, `fit`.

One process or many under torchrun (DDP with NCCL on CUDA, gloo on CPU). `batch_size` is the global batch:
global = per-rank batch x world size, and a per-rank batch larger than `micro_batch_size` is reached by
gradient accumulation under `no_sync()`. Metrics are reduced as sums and counts, never as means of means.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from landscape import checkpoint as ckpt_io
from landscape.cli import json_object, option
from landscape.config import DEVICES, PRECISIONS, check_choice
from landscape.data import Dataset, augment, list_datasets, load_dataset
from landscape.distributed import DistInfo, all_reduce_sum, print0
from landscape.errors import ConfigError, UserError
from landscape.evaluation import autocast_context, resolve_precision, source_sums
from landscape.files import write_json, write_text
from landscape.metrics import finish, get_metric
from landscape.models import build_model, list_models
from landscape.sources import TensorSource

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    """One training run; every field is a flag of `python -m trainers.train` under the same name."""

    out: str = option(help="run folder: epoch_N.pt (epoch_0000.pt: the initial weights), last.pt, metrics.jsonl, "
                      "config.json", metavar="DIR")
    dataset: str = option("mnist1d", "the dataset", choices=list_datasets(), group="data and model")
    data_kwargs: dict[str, Any] = option(help="JSON options of the dataset", type=json_object, default_factory=dict,
                                         metavar="JSON", group="data and model")
    data_dir: str | None = option(None, "folder of torchvision datasets (default: $LANDSCAPE_DATA or ./data)",
                                  metavar="DIR", group="data and model")
    download: bool = option(False, "let torchvision download a missing dataset", group="data and model")
    model: str = option("mlp", f"a registered model ({', '.join(list_models())}) or package.module:callable",
                        group="data and model")
    model_kwargs: dict[str, Any] = option(help="JSON keyword arguments of the model", type=json_object,
                                          default_factory=dict, metavar="JSON", group="data and model")
    batch_size: int = option(128, "global batch size (all ranks, all micro-batches)", group="optimization")
    micro_batch_size: int | None = option(None, "largest per-rank forward; larger per-rank batches use gradient "
                                          "accumulation", group="optimization")
    epochs: int = option(10, "epochs to train", group="optimization")
    optimizer: str = option("sgd", "the optimizer", choices=OPTIMIZERS, group="optimization")
    lr: float = option(0.1, "peak learning rate (at --base-batch-size with --scale-lr)", group="optimization")
    momentum: float = option(0.9, "SGD momentum", group="optimization")
    betas: tuple[float, float] = option((0.9, 0.999), "Adam/AdamW beta1 beta2 (language models often use 0.9 0.95)",
                                        group="optimization")
    nesterov: bool = option(False, "Nesterov momentum", group="optimization")
    weight_decay: float = option(0.0, "weight decay: L2 added to the gradient (sgd, adam), decoupled (adamw)",
                                 group="optimization")
    schedule: str = option("constant", "learning-rate schedule", choices=SCHEDULES, group="optimization")
    milestones: tuple[int, ...] = option((), "epochs where --schedule step multiplies the lr by --gamma",
                                         group="optimization")
    gamma: float = option(0.1, "lr decay factor at each milestone", group="optimization")
    warmup_epochs: float = option(0.0, "linear warmup (Goyal et al. 2017)", group="optimization")
    scale_lr: bool = option(False, "linear scaling rule: lr x batch-size / base-batch-size", group="optimization")
    base_batch_size: int = option(128, "the batch size --lr is given for, with --scale-lr", group="optimization")
    seed: int = option(0, "seed of the initialization and the data order", group="optimization")
    precision: str = option("auto", "fp32, or bf16 autocast; auto: bf16 on CUDA, fp32 on a CPU (stored metrics "
                            "are always fp32)", choices=PRECISIONS, group="runtime")
    device: str = option("auto", "auto: cuda:LOCAL_RANK when CUDA is there, else the CPU", choices=DEVICES,
                         group="runtime")
    compile: bool = option(False, "torch.compile the model", group="runtime")
    eval_batch_size: int = option(1024, "samples per forward pass when evaluating", metavar="N", group="runtime")
    eval_every: int = option(1, "epochs between full train/test evaluations", group="runtime")
    save_every: int = option(10, "epochs between kept epoch_N.pt files (last.pt is written every epoch)",
                             group="runtime")
    log_every: int = option(1, "epochs between printed lines (metrics.jsonl gets every epoch)", group="runtime")
    resume: bool = option(False, "continue from OUT/last.pt", group="runtime")
    progress: bool = option(True, "no progress bar", flag="--no-progress", group="runtime")

    def __post_init__(self) -> None:
        checks = [(self.batch_size >= 1, "--batch-size must be >= 1"),
                  (self.epochs >= 1, "--epochs must be >= 1"),
                  (self.lr > 0, "--lr must be > 0"),
                  (self.weight_decay >= 0, "--weight-decay must be >= 0"),
                  (self.micro_batch_size is None or self.micro_batch_size >= 1, "--micro-batch-size must be >= 1"),
                  (self.warmup_epochs >= 0, "--warmup-epochs must be >= 0"),
                  (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "--betas takes two values in [0, 1)"),
                  (min(self.eval_every, self.save_every, self.log_every, self.eval_batch_size) >= 1,
                   "--eval-every/--save-every/--log-every/--eval-batch-size must be >= 1")]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)
        for value, choices, flag in [(self.optimizer, OPTIMIZERS, "--optimizer"),
                                     (self.schedule, SCHEDULES, "--schedule"),
                                     (self.precision, PRECISIONS, "--precision"), (self.device, DEVICES, "--device")]:
            check_choice(value, choices, flag)

    def identity(self) -> dict[str, Any]:
        """The fields that define the run: a resume must match them all."""
        skip = {"out", "data_dir", "download", "device", "compile", "eval_batch_size", "eval_every",
                "save_every", "log_every", "resume", "progress"}
        return {k: v for k, v in _plain(dataclasses.asdict(self)).items() if k not in skip}


def _plain(obj: Any) -> Any:
    """Tuples to lists, recursively: what JSON and weights_only checkpoints hold."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


@dataclass(frozen=True)
class BatchPlan:
    global_batch_size: int
    per_rank_batch_size: int
    micro_batch_size: int
    accumulation_steps: int
    world_size: int
    steps_per_epoch: int


def make_plan(cfg: TrainConfig, world_size: int, n_train: int) -> BatchPlan:
    """Split the global batch over ranks and accumulation steps; every piece must divide exactly."""
    if cfg.batch_size % world_size:
        raise ConfigError(f"--batch-size {cfg.batch_size} is not divisible by the {world_size} processes; "
                          f"use a multiple of {world_size}")
    per_rank = cfg.batch_size // world_size
    micro = min(cfg.micro_batch_size or per_rank, per_rank)
    if per_rank % micro:
        raise ConfigError(f"per-rank batch {per_rank} is not a multiple of --micro-batch-size {micro}; "
                          "choose a divisor of it")
    steps = (n_train // world_size) // per_rank
    if steps == 0:
        raise ConfigError(f"--batch-size {cfg.batch_size} exceeds the {n_train} training samples; use a smaller batch")
    return BatchPlan(cfg.batch_size, per_rank, micro, per_rank // micro, world_size, steps)


def peak_lr(cfg: TrainConfig) -> float:
    return cfg.lr * (cfg.batch_size / cfg.base_batch_size if cfg.scale_lr else 1.0)


def lr_factor(step: int, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """Multiplier of peak_lr at optimizer step `step`: a pure function, so a resumed run is exact."""
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    total = cfg.epochs * steps_per_epoch
    factor = min(1.0, (step + 1) / warmup) if warmup else 1.0
    if cfg.schedule == "step":
        factor *= cfg.gamma ** sum(step >= m * steps_per_epoch for m in cfg.milestones)
    elif cfg.schedule == "cosine" and step >= warmup:
        factor *= 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
    return factor


def make_optimizer(model: nn.Module, cfg: TrainConfig, plan: BatchPlan):
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=peak_lr(cfg), momentum=cfg.momentum,
                              nesterov=cfg.nesterov and cfg.momentum > 0, weight_decay=cfg.weight_decay)
    else:  # AdamW: weight decay decoupled from the gradient's moments (Loshchilov & Hutter 2019)
        cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        opt = cls(model.parameters(), lr=peak_lr(cfg), betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg, plan.steps_per_epoch))
    return opt, sched


def train_one_epoch(ddp_model: nn.Module, opt: torch.optim.Optimizer, sched: Any, data: Dataset,
                    sampler: DistributedSampler, plan: BatchPlan, cfg: TrainConfig, epoch: int,
                    info: DistInfo) -> dict[str, float]:
    """One pass over this rank's shard; returns the running train loss (train mode, token-weighted for a language
    model) and samples/second (all ranks), and tokens/second for a language model."""
    ddp_model.train()
    sampler.set_epoch(epoch)
    idx = torch.tensor(list(iter(sampler)), device=info.device if data.resident else "cpu")
    gen = torch.Generator(device=info.device).manual_seed(cfg.seed * 100_003 + epoch * 1009 + info.rank)
    precision = resolve_precision(cfg.precision, info.device)
    losses: list[Tensor] = []  # one detached loss per micro-batch, summed once at the end of the epoch
    bar = tqdm(total=plan.steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
               disable=not (cfg.progress and info.is_main), dynamic_ncols=True)
    t0 = time.perf_counter()
    for step in range(plan.steps_per_epoch):
        batch = idx[step * plan.per_rank_batch_size:(step + 1) * plan.per_rank_batch_size]
        train_step(ddp_model, opt, sched, data, batch, plan, gen, precision, info, losses)
        bar.update()
    if info.device.type == "cuda":
        torch.cuda.synchronize(info.device)
    seconds = time.perf_counter() - t0
    bar.close()
    count = plan.steps_per_epoch * plan.global_batch_size
    loss_sum = torch.stack(losses).sum(dtype=torch.float64) * plan.micro_batch_size
    record = {"train_loss_running": float(all_reduce_sum(loss_sum)) / count,
              "images_per_second": count / seconds, "train_seconds": seconds}
    if data.sequences:  # the throughput that compares across sequence lengths
        record["tokens_per_second"] = count * data.tokens_per_sample / seconds
    return record


_NO_CONTEXT = contextlib.nullcontext()  # reusable; saves building one per micro-batch


def train_step(ddp_model: nn.Module, opt: torch.optim.Optimizer, sched: Any, data: Dataset, batch: Tensor,
               plan: BatchPlan, gen: torch.Generator, precision: str, info: DistInfo, losses: list[Tensor]) -> None:
    """One optimizer step on this rank's `batch` of train indices, accumulating over micro-batches under
    no_sync(); appends each micro-batch's detached mean loss to `losses`. No kernel is spent on the running loss
    here: a scalar add_ per step cost ~20 us, 3% of an MNIST-1D MLP step, and the step must stay as lean as a
    bare loop."""
    accumulate = plan.accumulation_steps > 1
    for micro in range(plan.accumulation_steps):
        mb = batch[micro * plan.micro_batch_size:(micro + 1) * plan.micro_batch_size] if accumulate else batch
        x, y = data.x_train[mb], data.y_train[mb]
        if not data.resident:  # memory-mapped shards: only the batch travels
            x, y = x.to(info.device, non_blocking=True), y.to(info.device, non_blocking=True)
        if data.augment:
            x = augment(x, gen)
        if x.ndim == 4 and info.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        last_micro = micro == plan.accumulation_steps - 1
        sync = ddp_model.no_sync() if info.is_distributed and not last_micro else _NO_CONTEXT
        with sync:
            with autocast_context(info.device, precision):
                out = ddp_model(x)
            # (B, C) and (B,), or a language model's (B, T, V) and (B, T): the mean over samples or tokens
            loss = nn.functional.cross_entropy(out.float().flatten(0, -2), y.flatten().long())
            # mean over the per-rank batch; no extra division kernel when there is nothing to accumulate
            (loss / plan.accumulation_steps if accumulate else loss).backward()
        losses.append(loss.detach())
    opt.step()
    opt.zero_grad(set_to_none=True)
    sched.step()


def evaluate(model: nn.Module, data: Dataset, info: DistInfo, batch_size: int, precision: str = "fp32"
             ) -> dict[str, float]:
    """Full train and test sets in eval mode, sharded without padding (rank r takes r, r+W, ...), summed: loss
    and accuracy (token-weighted for a language model, plus its perplexity ppl)."""
    model.eval()
    metric = get_metric(data.metric)
    metrics: dict[str, float] = {}
    for split in ("train", "test"):
        x, y = data.split(split)
        shard = slice(info.rank, None, info.world_size)
        source = TensorSource(x[shard], y[shard], info.device, batch_size)
        sums, keys = source_sums(model, source, metric, precision)
        total = all_reduce_sum(sums)
        means = finish(metric, {k: total[i] / total[-1] for i, k in enumerate(keys)})
        metrics.update({f"{split}_{k}": float(v) for k, v in means.items()})
    return metrics


def to_device(data: Dataset, device: torch.device) -> Dataset:
    """The dataset's tensors on the device, unless it lives on the host (the CPU, memory-mapped shards)."""
    if device.type == "cpu" or not data.resident:
        return data
    return dataclasses.replace(data, **{k: getattr(data, k).to(device, non_blocking=True)
                                        for k in ("x_train", "y_train", "x_test", "y_test")})


def _rng_state(device: torch.device) -> dict[str, Tensor]:
    """The global RNG states a resume restores (dropout and the like draw from them): the CPU's, and the rank's
    own CUDA device's. Every rank seeds them alike and draws alike, so rank 0's state serves every rank."""
    rng = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def _restore_rng_state(rng: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(rng["torch"])
    cuda = rng.get("cuda")
    if device.type == "cuda" and isinstance(cuda, list):  # landscape 0.1 saved every visible device's state
        cuda = cuda[device.index] if device.index < len(cuda) else None
    if device.type == "cuda" and cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


def _checkpoint(model: nn.Module, cfg: TrainConfig, plan: BatchPlan, data: Dataset, epoch: int, step: int,
                metrics: dict[str, float], opt: torch.optim.Optimizer, sched: Any, device: torch.device
                ) -> dict[str, Any]:
    model_kwargs = {"num_classes": data.num_classes, "input_shape": list(data.input_shape), **cfg.model_kwargs}
    rng = _rng_state(device)
    return ckpt_io.make_checkpoint(
        model, cfg.model, _plain(model_kwargs), cfg.dataset, _plain(cfg.data_kwargs), metrics,
        train_config=_plain(dataclasses.asdict(cfg)), plan=dataclasses.asdict(plan), epoch=epoch, step=step,
        optimizer=opt.state_dict(), scheduler=sched.state_dict(), rng=rng)


def _resume_state(cfg: TrainConfig) -> dict[str, Any] | None:
    """The last checkpoint to continue from, after checking it belongs to this very run."""
    last = os.path.join(cfg.out, "last.pt")
    if not os.path.exists(last):
        if cfg.resume:
            print0(f"--resume: no {last} yet, starting from scratch")
        return None
    if not cfg.resume:
        raise UserError(f"{cfg.out} already holds a run (last.pt); pass --resume to continue it or choose "
                        "another --out")
    state = ckpt_io.load_checkpoint(last)
    stored = TrainConfig(**{**state["train_config"], "out": cfg.out,
                            "milestones": tuple(state["train_config"]["milestones"])}).identity()
    diff = sorted(k for k, v in cfg.identity().items() if stored.get(k) != v)
    if diff:
        detail = ", ".join(f"{k}: {stored.get(k)!r} there vs {cfg.identity()[k]!r} now" for k in diff)
        raise UserError(f"--resume: {last} was trained with other settings ({detail}); use the same flags "
                        "or another --out")
    return state


def _append_jsonl(path: str, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_log(path: str, keep_epochs: int) -> None:
    """On resume, drop log lines of epochs after the checkpoint (they are about to be redone), and a last line
    torn by a kill in the middle of an append."""
    if not os.path.exists(path):
        return
    kept = []
    with open(path) as f:
        for line in f:
            try:
                if json.loads(line)["epoch"] <= keep_epochs:
                    kept.append(line)
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    write_text(path, "".join(kept))


def fit(cfg: TrainConfig, info: DistInfo) -> dict[str, Any] | None:
    """Train (or resume) the run described by cfg; returns the final checkpoint dict on rank 0 (None on the
    other ranks, unless the run was already complete)."""
    state = _resume_state(cfg)
    data = to_device(load_dataset(cfg.dataset, cfg.data_dir, cfg.download, **cfg.data_kwargs), info.device)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, num_classes=data.num_classes, input_shape=data.input_shape, **cfg.model_kwargs)
    model.to(info.device)
    if data.x_train.ndim == 4 and info.device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    plan = make_plan(cfg, info.world_size, len(data.x_train))
    opt, sched = make_optimizer(model, cfg, plan)
    start_epoch, step = 0, 0
    if state is not None:
        model.load_state_dict(state["state_dict"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start_epoch, step = int(state["epoch"]), int(state["step"])
        _restore_rng_state(state["rng"], info.device)
        if start_epoch >= cfg.epochs:
            print0(f"{cfg.out}: already complete ({start_epoch} epochs); nothing to do")
            return state
    sampler = DistributedSampler(range(len(data.x_train)), num_replicas=info.world_size, rank=info.rank,
                                 shuffle=True, seed=cfg.seed, drop_last=True)
    ddp_model: nn.Module = model
    if info.is_distributed:
        ddp_model = DDP(model, device_ids=[info.device] if info.device.type == "cuda" else None)
    if cfg.compile:
        ddp_model = torch.compile(ddp_model)
    log_path = os.path.join(cfg.out, "metrics.jsonl")
    if info.is_main:
        os.makedirs(cfg.out, exist_ok=True)
        _truncate_log(log_path, start_epoch)
        write_json(os.path.join(cfg.out, "config.json"),
                   {"train_config": _plain(dataclasses.asdict(cfg)), "plan": dataclasses.asdict(plan)})
        if start_epoch == 0:  # the initial weights: where a trajectory (landscape.trajectory) starts
            ckpt_io.save_checkpoint(_checkpoint(model, cfg, plan, data, 0, 0, {}, opt, sched, info.device),
                                    os.path.join(cfg.out, "epoch_0000.pt"))
        tokens = (f" sequences x {data.tokens_per_sample} tokens = {plan.global_batch_size * data.tokens_per_sample} "
                  "tokens" if data.sequences else "")
        print0(f"global batch {plan.global_batch_size}{tokens} = {plan.micro_batch_size} per forward x "
               f"{plan.accumulation_steps} accumulation steps x {plan.world_size} ranks; "
               f"{plan.steps_per_epoch} steps/epoch; peak lr {peak_lr(cfg):g}; device {info.device}")
    metrics: dict[str, float] = dict(state["metrics"]) if state else {}
    ckpt = state
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        lr = opt.param_groups[0]["lr"]
        run = train_one_epoch(ddp_model, opt, sched, data, sampler, plan, cfg, epoch, info)
        step += plan.steps_per_epoch
        done = epoch + 1
        if done % cfg.eval_every == 0 or done == cfg.epochs:
            metrics = {**evaluate(model, data, info, cfg.eval_batch_size), "metrics_epoch": done}
        record = {"epoch": done, "step": step, "lr": lr, **run, **metrics, "wall_seconds": time.perf_counter() - t0}
        if info.is_main:  # only rank 0 builds (copies weights and optimizer state to the CPU) and writes
            ckpt = _checkpoint(model, cfg, plan, data, done, step, metrics, opt, sched, info.device)
            if done % cfg.save_every == 0 or done == cfg.epochs:
                ckpt_io.save_checkpoint(ckpt, os.path.join(cfg.out, f"epoch_{done:04d}.pt"))
            ckpt_io.save_checkpoint(ckpt, os.path.join(cfg.out, "last.pt"))
            _append_jsonl(log_path, record)
            if done % cfg.log_every == 0 or done == cfg.epochs:
                print0(_format_record(record, cfg.epochs))
    return ckpt


def _format_record(r: dict[str, Any], epochs: int) -> str:
    speed = (f"{r['tokens_per_second']:.0f} tok/s" if "tokens_per_second" in r else
             f"{r['images_per_second']:.0f} img/s")
    line = (f"epoch {r['epoch']}/{epochs}  lr {r['lr']:.4g}  running loss {r['train_loss_running']:.4f}  "
            f"{speed}  {r['wall_seconds']:.1f}s")
    if "test_acc" in r:
        line += f"  | {metrics_text(r)}"
    return line


def metrics_text(m: dict[str, float]) -> str:
    """train and test loss and accuracy, and perplexity where there is one (a language model's)."""
    def split(name: str) -> str:
        ppl = f" ppl {m[f'{name}_ppl']:.3f}" if f"{name}_ppl" in m else ""
        return f"{name} loss {m[f'{name}_loss']:.4f} acc {m[f'{name}_acc']:.2f}%{ppl}"

    return f"{split('train')}  {split('test')}"
