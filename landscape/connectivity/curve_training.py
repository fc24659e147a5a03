"""Training a curve between two fixed minima (Garipov et al. 2018): minimize E_{t ~ U[0, 1]} L(theta(t)) over the
bend's weights, one t per step drawn from a seeded generator that every rank advances alike (so all ranks train
the same point of the curve), with the shared training step (landscape.optim: DDP over the bend, the optimizer
by name, the schedule as a pure function of the step).

The state (bend, optimizer, schedule, the generator of t, the step) is saved atomically every `save_seconds` and at
each epoch's end, so a killed run resumes to the result of an uninterrupted one; a state made for other endpoints
or another curve is refused.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DistributedSampler

from landscape.base.curve_config import CURVE_MILESTONES, CurveConfig
from landscape.base.errors import UserError
from landscape.base.files import atomic_path
from landscape.connectivity.curves import CurveModule
from landscape.core.fingerprint import check_fingerprint
from landscape.core.params import Params
from landscape.optim.builders import Schedule, make_optimizer, make_plan, make_scheduler
from landscape.optim.step import train_step, wrap_model
from landscape.runtime.distributed import DistInfo, all_reduce_sum, broadcast_object, print0, run_on_main
from landscape.runtime.metrics import loss_key
from landscape.runtime.sources import map_tensors


class ShuffledTensors:
    """Training batches from resident tensors, in torch's DistributedSampler order (one permutation per epoch,
    rank r taking every world_size-th sample of it): the global batch of a step is the same samples whatever the
    number of processes."""

    def __init__(self, x: Tensor, y: Tensor, global_batch_size: int, info: DistInfo, seed: int,
                 augment: Callable[[Tensor, torch.Generator], Tensor] | None = None):
        plan = make_plan(global_batch_size, info.world_size, len(x), flag="--train-batch-size")
        self.x, self.y, self.info, self.seed, self.augment = x, y, info, seed, augment
        self.per_rank, self.steps_per_epoch = plan.per_rank_batch_size, plan.steps_per_epoch

    def batches(self, epoch: int, start: int) -> Iterator[tuple[Tensor, Tensor]]:
        sampler = DistributedSampler(range(len(self.x)), self.info.world_size, self.info.rank, shuffle=True,
                                     seed=self.seed * 1_000_003, drop_last=True)
        sampler.set_epoch(epoch)
        mine = torch.tensor(list(sampler))
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch * 1009 + self.info.rank)
        for step in range(start, self.steps_per_epoch):
            idx = mine[step * self.per_rank:(step + 1) * self.per_rank]
            x = self.x[idx]
            if self.augment is not None:
                x = self.augment(x, gen)
            yield x.to(self.info.device), self.y[idx].to(self.info.device)


class LoaderBatches:
    """Training batches from a user's DataLoader (or re-iterable): rank r takes batches r, r + W, ...; torch's
    global generator is seeded per epoch, so a shuffling DataLoader draws the same order again on a resume."""

    def __init__(self, loader: Iterable, info: DistInfo, seed: int):
        self.loader, self.info, self.seed = loader, info, seed
        count = len(loader) if hasattr(loader, "__len__") else sum(1 for _ in loader)
        self.steps_per_epoch = count // info.world_size
        if self.steps_per_epoch == 0:
            raise UserError(f"the training data has {count} batches, fewer than the {info.world_size} processes")

    def batches(self, epoch: int, start: int) -> Iterator[Any]:
        torch.manual_seed(self.seed * 1_000_003 + epoch)
        w = self.info.world_size
        for batch in itertools.islice(iter(self.loader), start * w + self.info.rank, self.steps_per_epoch * w, w):
            yield map_tensors(batch, lambda t: t.to(self.info.device))


@dataclass(frozen=True)
class CurveTraining:
    """The trained bend (on the CPU) and how the training went: the mean training loss of each epoch along the
    curve (at its random t's), the steps, and how many of them this call took."""

    bend: Params
    epoch_losses: list[float]
    steps: int
    steps_run: int
    seconds: float


@dataclass
class Losses:
    """The training loss along the curve: each finished epoch's mean, and the sum and count of the steps of the
    epoch under way (so an epoch cut by a kill is still averaged over all its steps). Means over ranks."""

    epochs: list[float] = field(default_factory=list)
    partial: tuple[float, int] = (0.0, 0)

    def add(self, losses: list[Tensor], info: DistInfo) -> None:
        """Carry this call's step losses of the epoch under way (all ranks take part)."""
        if losses:
            total = float(all_reduce_sum(torch.stack(losses).sum(dtype=torch.float64).reshape(1)))
            self.partial = (self.partial[0] + total / info.world_size, self.partial[1] + len(losses))
            losses.clear()

    def close_epoch(self) -> float:
        self.epochs.append(self.partial[0] / max(1, self.partial[1]))
        self.partial = (0.0, 0)
        return self.epochs[-1]


def train_curve(curve: CurveModule, data: ShuffledTensors | LoaderBatches, loss_fn: Callable[[Any, Any], Tensor],
                cfg: CurveConfig, *, info: DistInfo, state_path: str, fingerprint: dict[str, Any],
                precision: str = "fp32", progress: bool = True) -> CurveTraining:
    """Train the bend of `curve` (on info.device) for cfg.epochs over `data`, resuming from `state_path` when it
    holds a state of the same `fingerprint`. loss_fn(outputs, batch) is the batch's mean loss."""
    curve.to_device(info.device)
    ddp_curve = wrap_model(curve, info)
    opt = make_optimizer(curve, cfg.optimizer, cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)
    steps = data.steps_per_epoch
    milestones = tuple(m * cfg.epochs for m in CURVE_MILESTONES)
    sched = make_scheduler(opt, Schedule(cfg.schedule, cfg.epochs, steps, milestones=milestones))
    t_gen = torch.Generator().manual_seed(cfg.seed)
    step, record = restore(state_path, fingerprint, curve, opt, sched=sched, t_gen=t_gen, info=info)
    first, total = step, cfg.epochs * steps
    started = time.perf_counter()
    every = None  # steps between two saves: rank 0's choice after a few steps, so that every rank saves together

    def save() -> None:
        save_state(state_path, fingerprint, curve, opt, sched=sched, t_gen=t_gen, step=step, record=record, info=info)

    curve.train()
    while step < total:
        epoch, at = divmod(step, steps)
        losses: list[Tensor] = []
        for batch in data.batches(epoch, at):
            curve.set_t(float(torch.rand((), generator=t_gen)))  # the same t on every rank
            train_step(ddp_curve, opt, sched, [(batch, batch)], accumulation_steps=1, precision=precision, info=info,
                       losses=losses, loss_fn=loss_fn)
            step += 1
            if every is None and step - first == SAVE_PROBE_STEPS:
                per_step = (time.perf_counter() - started) / SAVE_PROBE_STEPS
                every = broadcast_object(max(1, int(cfg.save_seconds / per_step)))
            if every is not None and (step - first) % every == 0 and step % steps:
                record.add(losses, info)
                save()
        record.add(losses, info)
        loss = record.close_epoch()
        if not math.isfinite(loss):
            raise UserError(f"the curve's training loss became {loss} in epoch {epoch + 1}; lower --lr")
        if progress or epoch + 1 == cfg.epochs:
            print0(f"curve epoch {epoch + 1}/{cfg.epochs}: mean train loss along the curve {loss:.4f}")
        save()
    curve.eval()
    return CurveTraining({k: v.cpu() for k, v in curve.bend_weights().items()}, record.epochs, total, total - first,
                         time.perf_counter() - started)


SAVE_PROBE_STEPS = 5  # steps timed before the save interval is chosen


def save_state(path: str, fingerprint: dict[str, Any], curve: CurveModule, opt: torch.optim.Optimizer, *, sched: Any,
               t_gen: torch.Generator, step: int, record: Losses, info: DistInfo) -> None:
    """The training state, written atomically by rank 0 (every rank calls it at the same step)."""
    def write() -> None:
        state = {"fingerprint": fingerprint, "step": step, "epoch_losses": list(record.epochs),
                 "epoch_partial": list(record.partial),
                 "bend": {k: v.cpu() for k, v in curve.bend_weights().items()}, "optimizer": opt.state_dict(),
                 "scheduler": sched.state_dict(), "t_generator": t_gen.get_state()}
        with atomic_path(path) as tmp:
            torch.save(state, tmp)

    run_on_main(write, info)


def read_state(path: str) -> dict[str, Any] | None:
    """A saved training state (weights_only), or None when there is none."""
    if not os.path.exists(path):
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to move away
        raise UserError(f"{path} is not a readable curve training state ({str(exc)[:100]}); move it away") from None
    if not isinstance(state, dict) or "fingerprint" not in state:
        raise UserError(f"{path} is not a curve training state of landscape; move it away or use another --out")
    return state


def check_state(path: str, fingerprint: dict[str, Any]) -> None:
    """Refuse a saved state made for other endpoints, another curve or other training settings."""
    state = read_state(path)
    if state is not None:
        check_fingerprint(path, state["fingerprint"], fingerprint)


def restore(path: str, fingerprint: dict[str, Any], curve: CurveModule, opt: torch.optim.Optimizer, *, sched: Any,
            t_gen: torch.Generator, info: DistInfo) -> tuple[int, Losses]:
    """Load a saved state into the bend, the optimizer, the schedule and the generator of t; the step and the
    losses so far, (0, no losses) when starting afresh. Rank 0 reads it and every rank gets it."""
    state = broadcast_object(run_on_main(lambda: read_state(path), info))
    if state is None:
        return 0, Losses()
    check_fingerprint(path, state["fingerprint"], fingerprint)
    with torch.no_grad():
        for p, k in zip(curve.bend, curve.names):
            p.copy_(state["bend"][k])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    t_gen.set_state(state["t_generator"])
    print0(f"resuming the curve's training at step {state['step']} ({path})")
    partial = state["epoch_partial"]
    return int(state["step"]), Losses(list(state["epoch_losses"]), (float(partial[0]), int(partial[1])))


def mean_loss(metric: Any, loss_name: str | None = None) -> Callable[[Any, Any], Tensor]:
    """The batch's mean loss from a metric's exact sums (what the evaluation measures), as training's loss_fn; the
    loss among the sums is picked as the evaluation picks it (landscape.runtime.metrics.loss_key), on the first
    batch."""
    keys: list[str] = []

    def loss(outputs: Any, batch: Any) -> Tensor:
        sums = metric(outputs, batch)
        if not keys:
            keys.append(loss_key(list(sums), loss_name))
        return sums[keys[0]] / sums["count"]

    return loss
