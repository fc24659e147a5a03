"""Optimizer and learning-rate schedule construction, shared by every command that trains: the batch plan (global
batch = per-rank batch x world size x accumulation steps), the optimizers by name, and the schedule as a pure
function of the optimizer step, so a resumed run continues exactly where it stopped."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from landscape.base.config import check_choice
from landscape.base.curve_config import OPTIMIZERS, SCHEDULES
from landscape.base.errors import ConfigError

LARS_TRUST = 0.001  # LARS's trust coefficient eta (You et al. 2017), timm's default
LR_SCALINGS = ("linear", "sqrt")  # Goyal et al. 2017; Hoffer et al. 2017


@dataclass(frozen=True)
class BatchPlan:
    global_batch_size: int
    per_rank_batch_size: int
    micro_batch_size: int
    accumulation_steps: int
    world_size: int
    steps_per_epoch: int


def make_plan(global_batch_size: int, world_size: int, n_train: int, micro_batch_size: int | None = None,
              flag: str = "--batch-size") -> BatchPlan:
    """Split the global batch over ranks and accumulation steps; every piece must divide exactly. `flag` is the
    batch's name in the messages (the command's flag that set it)."""
    if global_batch_size % world_size:
        raise ConfigError(f"{flag} {global_batch_size} is not divisible by the {world_size} processes; "
                          f"use a multiple of {world_size}")
    per_rank = global_batch_size // world_size
    micro = min(micro_batch_size or per_rank, per_rank)
    if per_rank % micro:
        raise ConfigError(f"per-rank batch {per_rank} is not a multiple of --micro-batch-size {micro}; "
                          "choose a divisor of it")
    steps = (n_train // world_size) // per_rank
    if steps == 0:
        raise ConfigError(f"{flag} {global_batch_size} exceeds the {n_train} training samples; use a smaller "
                          "batch")
    return BatchPlan(global_batch_size, per_rank, micro, per_rank // micro, world_size, steps)


@dataclass(frozen=True)
class GrowingBatch:
    """A global batch that grows with the epochs by accumulation steps over a fixed micro-batch (`accumulation`,
    per epoch, up to all of `plan`'s). The data order and the ranks' shares stay those of a fixed batch: only how
    many samples one step takes changes."""

    plan: BatchPlan  # the full batch's plan
    rank_samples: int  # training samples of one rank per epoch (the sampler's share)

    def accumulation(self, epoch: int) -> int:
        raise NotImplementedError

    def plan_at(self, epoch: int) -> BatchPlan:
        """The batch plan of one epoch."""
        acc, p = self.accumulation(epoch), self.plan
        per_rank = acc * p.micro_batch_size
        return BatchPlan(per_rank * p.world_size, per_rank, p.micro_batch_size, acc, p.world_size,
                         self.rank_samples // per_rank)

    def samples_before(self, step: int) -> int:
        """The global samples the optimizer steps before `step` took: what the schedule follows."""
        seen, epoch = 0, 0
        while step > 0:
            p = self.plan_at(epoch)
            taken = min(step, p.steps_per_epoch)
            seen, step, epoch = seen + taken * p.global_batch_size, step - taken, epoch + 1
        return seen

    def epoch_of(self, step: int) -> int:
        """The epoch optimizer step `step` (0-based) falls in."""
        epoch = 0
        while step >= self.plan_at(epoch).steps_per_epoch:
            step, epoch = step - self.plan_at(epoch).steps_per_epoch, epoch + 1
        return epoch

    def lr_factor(self, step: int) -> float:
        """The learning rate's multiplier at `step` over the schedule's: 1 (a ramp grows the batch instead of
        decaying the lr)."""
        return 1.0


@dataclass(frozen=True)
class BatchRamp(GrowingBatch):
    """Batch-size warmup (Smith et al. 2018): `start` accumulation steps at epoch 0, linearly more each epoch, all
    of `plan`'s from `epochs` on."""

    start: int = 1  # accumulation steps at epoch 0
    epochs: int = 1  # the epochs the ramp takes

    def accumulation(self, epoch: int) -> int:
        if epoch >= self.epochs:
            return self.plan.accumulation_steps
        return round(self.start + (self.plan.accumulation_steps - self.start) * epoch / self.epochs)


def make_ramp(plan: BatchPlan, start_batch: int, epochs: int, n_train: int) -> BatchRamp:
    """The ramp from a global batch of `start_batch` to `plan`'s over `epochs`, refused unless the start is a whole
    number of accumulation steps (micro-batch x ranks) smaller than the full batch."""
    unit = plan.micro_batch_size * plan.world_size
    if not start_batch < plan.global_batch_size:
        raise ConfigError(f"--batch-ramp starts at {start_batch}, not below --batch-size {plan.global_batch_size}, "
                          "which it grows to; start the ramp at a smaller batch")
    if start_batch % unit:
        raise ConfigError(f"--batch-ramp starts at {start_batch}, which is not a multiple of the micro-batch x ranks "
                          f"({unit}); set --micro-batch-size so that the batch grows by accumulation steps")
    return BatchRamp(plan, n_train // plan.world_size, start=start_batch // unit, epochs=epochs)


@dataclass(frozen=True)
class BatchSchedule(GrowingBatch):
    """A stepwise batch (Merrill et al. 2025's batch-size warmup): `stages` of (first epoch, accumulation steps),
    the first at epoch 0, the last `plan`'s; the learning rate follows each stage's batch by `rule` (linear, sqrt,
    landscape.optim.scaled_lr), relative to the full batch's."""

    stages: tuple[tuple[int, int], ...] = ()
    rule: str | None = None

    def accumulation(self, epoch: int) -> int:
        return next(acc for first, acc in reversed(self.stages) if epoch >= first)

    def lr_factor(self, step: int) -> float:
        batch = self.plan_at(self.epoch_of(step)).global_batch_size
        return scaled_lr(1.0, batch, self.plan.global_batch_size, self.rule)


def make_batch_schedule(plan: BatchPlan, stages: Sequence[tuple[int, int]], n_train: int, rule: str | None,
                        flag: str = "--batch-schedule") -> BatchSchedule:
    """The schedule of (global batch, first epoch) `stages`, refused in one line unless it starts at epoch 0, its
    epochs and batches increase, its last batch is `plan`'s and every batch is a whole number of accumulation
    steps (micro-batch x ranks)."""
    unit, text = plan.micro_batch_size * plan.world_size, ",".join(f"{b}:{e}" for b, e in stages)
    batches, epochs = [b for b, _ in stages], [e for _, e in stages]
    if epochs[0] != 0:
        raise ConfigError(f"{flag} {text}: the first stage must start at epoch 0 (e.g. {batches[0]}:0)")
    if any(b >= c for b, c in zip(batches, batches[1:])) or any(e >= f for e, f in zip(epochs, epochs[1:])):
        raise ConfigError(f"{flag} {text}: batches and epochs must both increase from stage to stage")
    if batches[-1] != plan.global_batch_size:
        raise ConfigError(f"{flag} {text}: the last stage's batch {batches[-1]} must be --batch-size "
                          f"({plan.global_batch_size}), the batch the schedule grows to")
    odd = [b for b in batches if b % unit]
    if odd:
        raise ConfigError(f"{flag} {text}: {', '.join(map(str, odd))} is not a whole number of micro-batches x ranks "
                          f"({unit}); set --micro-batch-size so that every stage is made of accumulation steps")
    return BatchSchedule(plan, n_train // plan.world_size, stages=tuple((e, b // unit) for b, e in stages),
                         rule=rule)


@dataclass(frozen=True)
class RampedSchedule:
    """A schedule followed in samples: at a step of a growing batch, the lr the full batch would have after the
    same number of samples (so growing the batch, not the schedule, is what changes), times the growing batch's
    lr factor (a batch schedule's rule at its stage)."""

    schedule: Schedule
    ramp: GrowingBatch

    def __call__(self, step: int) -> float:
        return (self.schedule(self.ramp.samples_before(step) / self.ramp.plan.global_batch_size)
                * self.ramp.lr_factor(step))


def scaled_lr(lr: float, global_batch_size: int, base_batch_size: int, rule: str | None) -> float:
    """`lr`, given for `base_batch_size`, at `global_batch_size`: unchanged (rule None), times the batch ratio
    (linear) or times its square root (sqrt)."""
    if rule is None:
        return lr
    check_choice(rule, LR_SCALINGS, "--scale-lr")
    ratio = global_batch_size / base_batch_size
    return lr * (ratio if rule == "linear" else math.sqrt(ratio))


@dataclass(frozen=True)
class Schedule:
    """The multiplier of the peak learning rate at each optimizer step: linear warm-up, then constant, step
    decay (gamma at each milestone epoch) or cosine to zero at the last step."""

    kind: str
    epochs: int
    steps_per_epoch: int
    warmup_epochs: float = 0.0
    gamma: float = 0.1
    milestones: tuple[float, ...] = ()  # epochs

    def __post_init__(self) -> None:
        check_choice(self.kind, SCHEDULES, "--schedule")

    def __call__(self, step: int) -> float:
        warmup = round(self.warmup_epochs * self.steps_per_epoch)
        total = self.epochs * self.steps_per_epoch
        factor = min(1.0, (step + 1) / warmup) if warmup else 1.0
        if self.kind == "step":
            factor *= self.gamma ** sum(step >= m * self.steps_per_epoch for m in self.milestones)
        elif self.kind == "cosine" and step >= warmup:
            factor *= 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
        return factor


def make_optimizer(model: nn.Module, name: str, lr: float, *, weight_decay: float = 0.0, momentum: float = 0.9,
                   nesterov: bool = False, betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.Optimizer:
    """The optimizer `name` over the model's parameters: SGD (momentum, Nesterov when asked and momentum > 0), Adam,
    AdamW (weight decay decoupled from the gradient's moments, Loshchilov & Hutter 2019), or LARS / LAMB (layer-wise
    trust ratios for SGD / Adam, You et al. 2017, 2019; see layerwise_optimizer)."""
    check_choice(name, OPTIMIZERS, "--optimizer")
    if name in ("lars", "lamb"):
        return layerwise_optimizer(model, name, lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                                   betas=betas)
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0,
                               weight_decay=weight_decay)
    cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=lr, betas=tuple(betas), weight_decay=weight_decay)


def layerwise_optimizer(model: nn.Module, name: str, lr: float, *, weight_decay: float, momentum: float,
                        nesterov: bool, betas: tuple[float, float]) -> torch.optim.Optimizer:
    """timm's Lars or Lamb, with the reference implementations' exclusions: biases and normalization parameters
    (every 1-D tensor) take neither weight decay nor the trust ratio, the weights always take the trust ratio.
    timm adapts a group only where its weight decay is non-zero unless `always_adapt`, so the weights' group sets
    it: at --weight-decay 0 LARS and LAMB would otherwise silently be SGD and Adam. LAMB's global gradient clipping
    (timm's max_grad_norm=1.0) is off, as in the trainer's other optimizers."""
    try:
        from timm.optim import Lamb, Lars
    except ImportError:
        raise ConfigError(f"--optimizer {name} needs timm's optimizers; install timm (pip install timm, or pip "
                          "install -e '.[remedies]' in the clone)") from None
    weights = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    rest = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": weights, "weight_decay": weight_decay, "always_adapt": True},
              {"params": rest, "weight_decay": 0.0, "always_adapt": False}]
    if name == "lars":
        return Lars(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0, trust_coeff=LARS_TRUST)
    return Lamb(groups, lr=lr, betas=tuple(betas), max_grad_norm=None)


def make_scheduler(opt: torch.optim.Optimizer, schedule: Schedule | RampedSchedule
                   ) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule as a LambdaLR. Wrapped in a function: LambdaLR's state_dict stores a callable object's fields
    (weights_only loading would refuse a nested one), and the schedule is rebuilt from the config on resume."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: schedule(step))
