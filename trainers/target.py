"""Training until a target: the steps a run of the trainer takes to reach a test accuracy or loss, the measurement
behind steps-to-result curves (Shallue et al. 2018). The run is the trainer's own (trainers.loop's model, sampler,
micro-batches and step, landscape.optim's optimizer and schedule), checked against the target on a growing
grid of steps, and stopped at the target, at `max_steps`, or where it diverges.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from landscape.core.fingerprint import tensors_sha256
from landscape.data.datasets import Dataset
from landscape.optim.divergence import DivergenceWatch
from landscape.optim.step import train_step, wrap_model
from landscape.runtime.distributed import DistInfo
from landscape.runtime.forward import loss_accuracy, resolve_precision
from landscape.runtime.metrics import get_metric
from trainers.config import TrainConfig, optimizer_of, plan_of, ramp_of
from trainers.loop import build_run, epoch_order, micro_batches, run_sampler


@dataclass(frozen=True)
class Target:
    """What counts as reached: a test accuracy (%) of at least `acc`, or with `loss` a test loss of at most it, on
    the first `samples` test samples (None: all), checked after step 1 and then every max(1, growth x step)
    steps (0: every step)."""

    acc: float | None = None
    loss: float | None = None
    samples: int | None = None
    growth: float = 0.0

    def __post_init__(self) -> None:
        if (self.acc is None) == (self.loss is None):
            raise ValueError("give a target accuracy or a target loss, one of them")

    def met(self, loss: float, acc: float) -> bool:
        return loss <= self.loss if self.loss is not None else acc >= self.acc

    @property
    def text(self) -> str:
        return f"test loss {self.loss:g}" if self.loss is not None else f"{self.acc:g}% test acc"


def epochs_for(cfg: TrainConfig, n_train: int, world_size: int, max_steps: int) -> TrainConfig:
    """cfg with --epochs enough for `max_steps` optimizer steps (the schedule's length)."""
    plan = plan_of(cfg, world_size, n_train)
    return replace(cfg, epochs=max(1, math.ceil(max_steps / plan.steps_per_epoch)))


def train_to_target(cfg: TrainConfig, data: Dataset, info: DistInfo, target: Target, max_steps: int,
                    on_step: Callable[[int, nn.Module], None] | None = None) -> dict[str, Any]:
    """Train cfg's run (from its seed) until `target`, at most `max_steps` optimizer steps; `on_step(step, model)`
    after each step (a measurement that leaves the training as it was). Returns the steps to the target (None if
    not reached), the steps run, the training throughput (evaluation excluded), the step where the loss or the
    weights stopped being finite (None), the checks made: [(step, test loss, test accuracy)], and the hash of the
    final weights."""
    cfg = epochs_for(cfg, len(data.x_train), info.world_size, max_steps)
    model, plan, length = build_run(cfg, data, info)
    ramp = ramp_of(cfg, plan, length, len(data.x_train))
    opt, sched = optimizer_of(model, cfg, plan, length, ramp)
    ddp_model, sampler = wrap_model(model, info, cfg.compile), run_sampler(len(data.x_train), cfg, info)
    precision, metric, watch = resolve_precision(cfg.precision, info.device), get_metric(data.metric), \
        DivergenceWatch(model, info)
    x_test, y_test = data.x_test[:target.samples], data.y_test[:target.samples]
    step, samples, next_check, seconds, reached, diverged, checks = 0, 0, 1, 0.0, None, None, []
    losses: list[Tensor] = []
    epoch = 0
    while step < max_steps and reached is None and diverged is None:
        now = ramp.plan_at(epoch) if ramp is not None else plan
        idx, gen = epoch_order(data, sampler, cfg, epoch, info)
        for i in range(now.steps_per_epoch):
            ddp_model.train()
            t0 = time.perf_counter()
            batch = idx[i * now.per_rank_batch_size:(i + 1) * now.per_rank_batch_size]
            lr = opt.param_groups[0]["lr"]
            train_step(ddp_model, opt, sched, micro_batches(data, batch, now, gen, info.device),
                       accumulation_steps=now.accumulation_steps, precision=precision, info=info, losses=losses)
            if info.device.type == "cuda":
                torch.cuda.synchronize(info.device)
            seconds += time.perf_counter() - t0
            step, samples = step + 1, samples + now.global_batch_size
            bad = watch.after_step(step, losses, lr)
            losses.clear()
            if bad is None and (step >= next_check or step >= max_steps):
                bad = watch.check()
            if bad is not None:
                diverged = bad[0]
                break
            if on_step is not None:
                on_step(step, model)
            if step >= next_check:
                next_check = step + max(1, int(target.growth * step))
                model.eval()
                result = loss_accuracy(model, x_test, y_test, cfg.eval_batch_size, precision, metric)
                checks.append((step, result.loss, result.acc))
                if target.met(result.loss, result.acc):
                    reached = step
                    break
            if step >= max_steps:
                break
        epoch += 1
    return {"steps_to_target": reached, "steps_run": step, "samples_run": samples,
            "samples_per_second": samples / seconds if seconds else float("nan"), "diverged_at_step": diverged,
            "checks": checks, "weights_sha256": tensors_sha256(model.state_dict())}
