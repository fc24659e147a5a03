"""The epoch loop of data-parallel training: `train_one_epoch`, `evaluate`, `fit`.

One process or many under torchrun (DDP with NCCL on CUDA, gloo on CPU). `batch_size` is the global batch:
global = per-rank batch x world size, and a per-rank batch larger than `micro_batch_size` is reached by
gradient accumulation under `no_sync()` (landscape.optim). Metrics are reduced as sums and counts, never as
means of means.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Iterator
from dataclasses import KW_ONLY, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from landscape.base.files import write_json
from landscape.data.datasets import Dataset, augment, load_dataset
from landscape.models import checkpoint_file as ckpt_io
from landscape.models.registry import build_model
from landscape.optim.builders import BatchPlan
from landscape.optim.divergence import DivergenceWatch, TrainingDiverged, diverged_message
from landscape.optim.step import wrap_model
from landscape.runtime.distributed import DistInfo, all_reduce_sum, exclusive_output, print0
from landscape.runtime.forward import resolve_precision, source_sums
from landscape.runtime.metrics import finish, get_metric
from landscape.runtime.sources import TensorSource
from trainers.config import (
    RunLength,
    TrainConfig,
    optimizer_of,
    peak_lr,
    plain,
    plan_of,
    ramp_of,
    run_length,
    tau_of,
    weight_decay_of,
)
from trainers.events import EventLog
from trainers.remedies import Step, StepParts, prepare_model, step_of
from trainers.run_files import (
    append_jsonl,
    model_kwargs_of,
    restore_rng_state,
    resume_state,
    run_checkpoint,
    truncate_log,
)
from trainers.tracking import NoiseTracker, SharpnessTracker, Tracking


@dataclass
class RunState:
    """What an epoch of training works with: the module and its DDP wrapper, the optimizer and its schedule, this
    epoch's batch plan, the run's optimizer step (plain or a remedy's: trainers.remedies.step_of), and what watches
    the steps (the trackers, the divergence check), each optional."""

    model: nn.Module
    ddp_model: nn.Module
    opt: torch.optim.Optimizer
    sched: Any
    plan: BatchPlan
    step: Step
    _: KW_ONLY  # the fields below are keyword-only
    tracking: Tracking | None = None
    watch: DivergenceWatch | None = None


def run_state(cfg: TrainConfig, model: nn.Module, ddp_model: nn.Module, opt: torch.optim.Optimizer, sched: Any,
              plan: BatchPlan, *, info: DistInfo, **watchers: Any) -> RunState:
    """The RunState of cfg's run, its optimizer step chosen by the run's remedies."""
    parts = StepParts(model, ddp_model, opt, sched, resolve_precision(cfg.precision, info.device), info)
    return RunState(model, ddp_model, opt, sched, plan, step_of(cfg, parts), **watchers)


def train_one_epoch(run: RunState, data: Dataset, sampler: DistributedSampler, cfg: TrainConfig, epoch: int,
                    info: DistInfo, *, epochs: int | None = None, first_step: int = 0) -> dict[str, Any]:
    """One pass over this rank's shard; returns the running train loss (train mode, token-weighted for a language
    model) and samples/second (all ranks), and tokens/second for a language model. When `run.watch` finds a
    non-finite loss or weights, the pass stops there and returns {"diverged": (step, lr)} instead."""
    plan, opt, tracking, watch = run.plan, run.opt, run.tracking, run.watch
    run.ddp_model.train()
    idx, gen = epoch_order(data, sampler, cfg, epoch, info)
    losses: list[Tensor] = []  # one detached loss per micro-batch, summed once at the end of the epoch
    bar = tqdm(total=plan.steps_per_epoch, desc=f"epoch {epoch + 1}/{epochs or cfg.epochs}", leave=False,
               disable=not (cfg.progress and info.is_main), dynamic_ncols=True)
    t0 = time.perf_counter()
    for step in range(plan.steps_per_epoch):
        batch = idx[step * plan.per_rank_batch_size:(step + 1) * plan.per_rank_batch_size]
        pieces = micro_batches(data, batch, plan, gen, info.device)
        lr, before = opt.param_groups[0]["lr"], len(losses)
        if tracking is not None:
            tracking.before_step(plan)
        run.step(pieces, plan, losses)
        bad = watch.after_step(first_step + step + 1, losses[before:], lr) if watch is not None else None
        if bad is None and watch is not None and step + 1 == plan.steps_per_epoch:
            bad = watch.check()  # the rest of the epoch, and the weights the checkpoint would hold
        if bad is not None:
            bar.close()
            return {"diverged": bad}
        if tracking is not None:
            tracking.after_step(first_step + step + 1, epoch, opt)
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


def epoch_order(data: Dataset, sampler: DistributedSampler, cfg: TrainConfig, epoch: int, info: DistInfo
                ) -> tuple[Tensor, torch.Generator]:
    """This rank's train indices of `epoch`, in order, and the generator its augmentations draw from: the same
    for every command that continues a run (trainers.branch), so a continuation sees what the run would have."""
    sampler.set_epoch(epoch)
    idx = torch.tensor(list(iter(sampler)), device=info.device if data.resident else "cpu")
    return idx, torch.Generator(device=info.device).manual_seed(cfg.seed * 100_003 + epoch * 1009 + info.rank)


def run_sampler(n_train: int, cfg: TrainConfig, info: DistInfo) -> DistributedSampler:
    """The run's sampler: each rank's shard of a shuffled epoch, the remainder dropped."""
    return DistributedSampler(range(n_train), num_replicas=info.world_size, rank=info.rank, shuffle=True,
                              seed=cfg.seed, drop_last=True)


def micro_batches(data: Dataset, batch: Tensor, plan: BatchPlan, gen: torch.Generator, device: torch.device
                  ) -> Iterator[tuple[Tensor, Tensor]]:
    """The micro-batches (x, y) of this rank's `batch` of train indices: moved to the device when the data lives
    on the host, augmented when the dataset asks, channels_last for images on CUDA."""
    for micro in range(plan.accumulation_steps):
        mb = batch[micro * plan.micro_batch_size:(micro + 1) * plan.micro_batch_size] \
            if plan.accumulation_steps > 1 else batch
        x, y = data.x_train[mb], data.y_train[mb]
        if not data.resident:  # memory-mapped shards: only the batch travels
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if data.augment:
            x = augment(x, gen)
        if x.ndim == 4 and device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        yield x, y


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


def fit(cfg: TrainConfig, info: DistInfo) -> dict[str, Any] | None:
    """Train (or resume) the run described by cfg, as the one writer of cfg.out (a second run on the same folder is
    refused before any work); returns the final checkpoint dict on rank 0 (None on the other ranks, unless the run
    was already complete). A run whose loss or weights stop being finite raises TrainingDiverged, its last finite
    checkpoint kept."""
    with exclusive_output(cfg.out, info):
        return _fit(cfg, info)


def _fit(cfg: TrainConfig, info: DistInfo) -> dict[str, Any] | None:
    state = resume_state(cfg)
    data = to_device(load_dataset(cfg.dataset, cfg.data_dir, cfg.download, **cfg.data_kwargs), info.device)
    model, plan, length = build_run(cfg, data, info)
    ramp = ramp_of(cfg, plan, length, len(data.x_train))
    opt, sched = optimizer_of(model, cfg, plan, length, ramp)
    start_epoch, step = 0, 0
    if state is not None:
        model.load_state_dict(state["state_dict"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start_epoch, step = int(state["epoch"]), int(state["step"])
        restore_rng_state(state["rng"], info.device)
        if start_epoch >= length.epochs:
            print0(f"{cfg.out}: already complete ({start_epoch} epochs); nothing to do")
            return state
    sampler = run_sampler(len(data.x_train), cfg, info)
    ddp_model = wrap_model(model, info, cfg.compile)
    log_path = os.path.join(cfg.out, "metrics.jsonl")
    tracking = tracking_of(cfg, model, ddp_model, data, plan=plan, ramp=ramp, length=length, info=info, state=state)
    save = functools.partial(run_checkpoint, model, cfg, plan, data, opt=opt, sched=sched, device=info.device,
                             run_epochs=length.epochs)
    events = EventLog(cfg.out, step) if cfg.tensorboard and info.is_main else None
    if info.is_main:
        truncate_log(log_path, step)
        write_json(os.path.join(cfg.out, "config.json"),
                   {"train_config": plain(dataclasses.asdict(cfg)), "plan": dataclasses.asdict(plan),
                    "run_epochs": length.epochs})
        if start_epoch == 0:  # the initial weights: where a trajectory (landscape.trajectory) starts
            ckpt_io.save_checkpoint(save(epoch=0, step=0, metrics={}), os.path.join(cfg.out, "epoch_0000.pt"))
        print0(plan_text(cfg, plan, length, data, info))
    metrics: dict[str, float] = dict(state["metrics"]) if state else {}
    ckpt = state
    training = run_state(cfg, model, ddp_model, opt, sched, plan, info=info, tracking=tracking,
                         watch=DivergenceWatch(model, info))
    try:
        for epoch in range(start_epoch, length.epochs):
            t0 = time.perf_counter()
            lr = opt.param_groups[0]["lr"]
            now = ramp.plan_at(epoch) if ramp is not None else plan  # this epoch's batch
            training.plan = now
            run = train_one_epoch(training, data, sampler, cfg, epoch, info, epochs=length.epochs, first_step=step)
            if "diverged" in run:
                raise diverged(cfg, epoch, *run["diverged"])
            measured, summary = tracking.epoch_records() if tracking is not None else ([], {})
            step += now.steps_per_epoch
            done, last = epoch + 1, epoch + 1 == length.epochs
            if done % cfg.eval_every == 0 or last:
                metrics = {**evaluate(model, data, info, cfg.eval_batch_size), "metrics_epoch": done}
            tau = tau_of(now.global_batch_size, lr, weight_decay_of(cfg), len(data.x_train))
            record = {"epoch": done, "step": step, "lr": lr, "global_batch_size": now.global_batch_size, "tau": tau,
                      **run, **summary, **metrics, "wall_seconds": time.perf_counter() - t0}
            if info.is_main:  # only rank 0 builds (copies weights and optimizer state to the CPU) and writes
                kept = save(epoch=done, step=step, metrics=metrics, tracking=tracking.state() if tracking else None)
                ckpt = write_epoch(cfg, record, measured, events, kept, last)
                if done % cfg.log_every == 0 or last:
                    print0(_format_record(record, length.epochs))
    finally:
        if events is not None:
            events.close()
    return ckpt


def write_epoch(cfg: TrainConfig, record: dict[str, Any], measured: list[dict[str, Any]], events: EventLog | None,
                ckpt: dict[str, Any], last: bool) -> dict[str, Any]:
    """The epoch's records, then its checkpoint: the TensorBoard events and the log lines first, so that a kill
    before the checkpoint leaves records past its step, which a resume drops (truncate_log, the events' purge
    step) and writes again; a kill after it leaves both complete."""
    if events is not None:
        events.write(record, measured)
    log_path = os.path.join(cfg.out, "metrics.jsonl")
    append_jsonl(log_path, [*measured, record])
    done = record["epoch"]
    if done % cfg.save_every == 0 or last:
        ckpt_io.save_checkpoint(ckpt, os.path.join(cfg.out, f"epoch_{done:04d}.pt"))
    ckpt_io.save_checkpoint(ckpt, os.path.join(cfg.out, "last.pt"))
    return ckpt


def diverged(cfg: TrainConfig, epoch: int, step: int, lr: float) -> TrainingDiverged:
    """The error of a run that diverged at `step`, naming the checkpoint it keeps (none after it was written)."""
    last = os.path.join(cfg.out, "last.pt")
    kept = last if os.path.exists(last) else os.path.join(cfg.out, "epoch_0000.pt")
    return TrainingDiverged(diverged_message(step, epoch + 1, lr, kept, cfg.sam), step, lr)


def tracking_of(cfg: TrainConfig, model: nn.Module, ddp_model: nn.Module, data: Dataset, *, plan: BatchPlan,
                ramp: Any, length: RunLength, info: DistInfo, state: dict[str, Any] | None) -> Tracking | None:
    """What the run measures while training (--track-sharpness, --track-noise), resumed from `state`."""
    if not (cfg.track_sharpness or cfg.track_noise):
        return None
    sharpness = None
    if cfg.track_sharpness:
        last_step = sum((ramp.plan_at(e) if ramp else plan).steps_per_epoch for e in range(length.epochs))
        sharpness = SharpnessTracker(cfg, model, data, info, last_step, state.get("tracking") if state else None)
    first_step = int(state["step"]) if state else 0
    noise = NoiseTracker(cfg, ddp_model, data, plan, first_step) if cfg.track_noise else None
    return Tracking(sharpness, noise)


def build_run(cfg: TrainConfig, data: Dataset, info: DistInfo) -> tuple[nn.Module, BatchPlan, RunLength]:
    """The model (seeded, on the device, changed by the run's remedies), the batch plan and the run's length; every
    check of the flags against the data and the model happens here, before anything is written."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, **model_kwargs_of(cfg, data))
    model.to(info.device)
    if data.x_train.ndim == 4 and info.device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    plan = plan_of(cfg, info.world_size, len(data.x_train))
    prepare_model(model, cfg)  # what the run's remedies change in it (Ghost BatchNorm)
    return model, plan, run_length(cfg, plan, len(data.x_train))


def plan_text(cfg: TrainConfig, plan: BatchPlan, length: RunLength, data: Dataset, info: DistInfo) -> str:
    """The line that says how the global batch is made, and how long the run is."""
    tokens = (f" sequences x {data.tokens_per_sample} tokens = {plan.global_batch_size * data.tokens_per_sample} "
              "tokens" if data.sequences else "")
    regime = (f"; regime adaptation: {length.epochs} epochs = {length.epochs * plan.steps_per_epoch} steps, as batch "
              f"{cfg.base_batch_size} takes in {cfg.epochs} epochs" if cfg.regime_adaptation else "")
    if cfg.scale_wd:
        tau = tau_of(cfg.base_batch_size, cfg.lr, cfg.weight_decay, len(data.x_train))
        regime += (f"; weight decay {weight_decay_of(cfg):.3g} (--scale-wd tau: tau {tau:.3g} epochs, as batch "
                   f"{cfg.base_batch_size} at lr {cfg.lr:g} and weight decay {cfg.weight_decay:g})")
    if cfg.batch_schedule:
        regime += f"; batch schedule {cfg.batch_schedule} (batch:epoch), the lr by the {cfg.scale_lr} rule per stage"
    return (f"global batch {plan.global_batch_size}{tokens} = {plan.micro_batch_size} per forward x "
            f"{plan.accumulation_steps} accumulation steps x {plan.world_size} ranks; "
            f"{plan.steps_per_epoch} steps/epoch; peak lr {peak_lr(cfg):g}; device {info.device}{regime}")


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
