"""The large-batch remedies the trainer knows, registered. Each `Remedy` owns its flags (a frozen dataclass of
fields, one of the pieces `TrainConfig` is made of), its checks against the run and its batch plan, and its part of
the run (the model it changes, the optimizer step it takes). `RECIPES` are the literature's remedies as the naive
large batch changed by them (Goyal's, Hoffer's, LARS, SAM...): what the generalization-gap figure trains. A new
remedy is its flags, one `register_remedy` call and a test; a new recipe one entry of RECIPES.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import KW_ONLY, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from landscape.base.errors import ConfigError
from landscape.base.flags import option
from landscape.base.registry import Registry
from landscape.optim.builders import BatchPlan
from landscape.optim.ghost_bn import ghost_batchnorm
from landscape.optim.sam import sam_step
from landscape.optim.step import train_step
from landscape.runtime.distributed import DistInfo

GROUP = "large-batch remedies"  # the remedies' flags in --help
Config = Any  # a trainers.config.TrainConfig: it is made of the flag pieces below, so it is not imported here


@dataclass(frozen=True, kw_only=True)
class SamFlags:
    """SAM's radius, its adaptive variant, and the samples per ascent."""

    sam: float | None = option(None, "Sharpness-Aware Minimization (Foret et al. 2021) around the optimizer, with "
                               "ascent radius RHO (0.05 is the paper's)", metavar="RHO", group=GROUP)
    sam_adaptive: bool = option(False, "ASAM (Kwon et al. 2021): the ascent scaled by the weights' magnitudes",
                                group=GROUP)
    sam_m: int | None = option(None, "m-sharpness: an ascent per M samples (M divides the micro-batch); default "
                               "the rank's whole batch", metavar="M", group=GROUP)


@dataclass(frozen=True, kw_only=True)
class GhostBatchFlags:
    """The ghost batch BatchNorm normalizes over in training."""

    ghost_batch_size: int | None = option(None, "Ghost BatchNorm (Hoffer et al. 2017): in training, every BatchNorm "
                                          "normalizes over chunks of N samples of each micro-batch (N must divide "
                                          "it); evaluation and the saved model are plain BatchNorm", metavar="N",
                                          group=GROUP)


@dataclass(frozen=True, kw_only=True)
class RegimeFlags:
    """Hoffer's regime adaptation: the small batch's optimizer steps."""

    regime_adaptation: bool = option(False, "Hoffer et al. 2017: train as many optimizer steps as --base-batch-size "
                                     "takes in --epochs (a batch k times larger trains k times the epochs), with the "
                                     "schedule's warmup and milestones stretched alike", group=GROUP)


@dataclass(frozen=True, kw_only=True)
class BatchGrowthFlags:
    """A batch that grows during the run: linearly (a ramp) or by stages (a schedule)."""

    batch_ramp: str | None = option(None, "batch warmup (Smith et al. 2018): the batch grows linearly from START to "
                                    "--batch-size over EPOCHS epochs by accumulation (START: micro-batch x ranks x "
                                    "n); the schedule follows the samples seen", metavar="START:EPOCHS", group=GROUP)
    batch_schedule: str | None = option(None, "a stepwise batch (Merrill et al. 2025): BATCH:EPOCH stages, e.g. "
                                        "64:0,128:5,256:12, the first at epoch 0, the last at --batch-size, each a "
                                        "whole number of micro-batches x ranks; the lr follows each stage's batch by "
                                        "--scale-lr's rule, and the schedule the samples seen",
                                        metavar="B:E,...", group=GROUP)


WD_SCALINGS = ("tau",)  # Bergsma et al. 2025: hold AdamW's timescale of weight decay as the batch grows


@dataclass(frozen=True, kw_only=True)
class DecayScalingFlags:
    """Weight decay scaled with the batch, holding its timescale."""

    scale_wd: str | None = option(None, "tau: scale --weight-decay with the batch so that the timescale tau = B / "
                                  "(lr x weight decay x D) of --base-batch-size at --lr holds at --batch-size and its "
                                  "scaled lr (Bergsma et al. 2025): weight decay x (B / base) x (lr / scaled lr); sgd "
                                  "and adamw, whose decay shrinks the weights by lr x weight decay a step",
                                  choices=WD_SCALINGS, group=GROUP)


@dataclass(frozen=True)
class StepParts:
    """What an optimizer step works on: the module and its DDP wrapper, the optimizer and its schedule, the
    precision and the process group."""

    model: nn.Module
    ddp_model: nn.Module
    opt: torch.optim.Optimizer
    sched: Any
    precision: str
    info: DistInfo


Step = Callable[[Iterable[tuple[Tensor, Tensor]], BatchPlan, list[Tensor]], None]  # (micro-batches, plan, losses)


def plain_step(cfg: Config, p: StepParts) -> Step:
    """The optimizer step of a run with no remedy of its own: accumulate the plan's micro-batches, then update."""
    return lambda pieces, plan, losses: train_step(p.ddp_model, p.opt, p.sched, pieces,
                                                   accumulation_steps=plan.accumulation_steps,
                                                   precision=p.precision, info=p.info, losses=losses)


def _sam(cfg: Config, p: StepParts) -> Step:
    return lambda pieces, plan, losses: sam_step(p.ddp_model, p.model, p.opt, p.sched, pieces, precision=p.precision,
                                                 info=p.info, losses=losses, rho=cfg.sam, adaptive=cfg.sam_adaptive,
                                                 m=cfg.sam_m)


@dataclass(frozen=True)
class Remedy:
    """One remedy of the trainer. `flags`: its fields, a piece of TrainConfig; `active(cfg)`: whether the run uses
    it; `problems(cfg)`: the messages refusing a config that misuses it (checked when the config is made);
    `plan_problems(cfg, plan)`: those against the batch plan (checked before any work); `on_model(model, cfg)`:
    how it changes the freshly built model; `step(cfg, parts)`: the optimizer step it takes instead of the plain
    one."""

    name: str
    description: str
    flags: type
    _: KW_ONLY  # the fields below are keyword-only
    active: Callable[[Config], bool]
    problems: Callable[[Config], list[str]] = lambda cfg: []
    plan_problems: Callable[[Config, BatchPlan], list[str]] = lambda cfg, plan: []
    on_model: Callable[[nn.Module, Config], None] | None = None
    step: Callable[[Config, StepParts], Step] | None = None


REMEDIES = Registry("remedy")
register_remedy = REMEDIES.add


def check_remedies(cfg: Config) -> None:
    """Refuse a config that misuses a remedy, with the first problem found."""
    for remedy in REMEDIES.values():
        for problem in remedy.problems(cfg):
            raise ConfigError(problem)


def check_remedies_on_plan(cfg: Config, plan: BatchPlan) -> None:
    for remedy in REMEDIES.values():
        if remedy.active(cfg):
            for problem in remedy.plan_problems(cfg, plan):
                raise ConfigError(problem)


def prepare_model(model: nn.Module, cfg: Config) -> nn.Module:
    """The model as the run's remedies change it (Ghost BatchNorm)."""
    for remedy in REMEDIES.values():
        if remedy.on_model is not None and remedy.active(cfg):
            remedy.on_model(model, cfg)
    return model


def step_of(cfg: Config, parts: StepParts) -> Step:
    """The run's optimizer step: its remedy's (SAM's), or the plain one; one signature for both."""
    chosen = [r for r in REMEDIES.values() if r.step is not None and r.active(cfg)]
    return (chosen[0].step if chosen else plain_step)(cfg, parts)


def _divides(flag: str, n: int | None, plan: BatchPlan) -> list[str]:
    if n and plan.micro_batch_size % n:
        return [f"{flag} {n} does not divide the micro-batch of {plan.micro_batch_size} samples per forward; choose "
                "a divisor of it"]
    return []


def _sam_problems(cfg: Config) -> list[str]:
    return [msg for ok, msg in [
        (cfg.sam is None or cfg.sam > 0, "--sam must be > 0 (the ascent radius rho), or left out"),
        (cfg.sam is not None or not (cfg.sam_adaptive or cfg.sam_m), "--sam-m and --sam-adaptive need --sam RHO"),
        (cfg.sam_m is None or cfg.sam_m >= 1, "--sam-m must be >= 1")] if not ok]


def _growth_problems(cfg: Config) -> list[str]:
    problems = [msg for ok, msg in [
        (not (cfg.batch_ramp and cfg.regime_adaptation), "--batch-ramp and --regime-adaptation do not combine: "
         "regime adaptation matches the optimizer steps of a fixed batch, and a ramp's smaller early batches take "
         "more steps; give one of them"),
        (not (cfg.batch_schedule and (cfg.batch_ramp or cfg.regime_adaptation)), "--batch-schedule does not combine "
         "with --batch-ramp or --regime-adaptation: each sets how the batch or the steps grow; give one of them"),
        (not cfg.batch_schedule or cfg.scale_lr, "--batch-schedule applies the lr rule at each change of batch: give "
         "--scale-lr linear (SGD) or sqrt (Adam), with --base-batch-size")] if not ok]
    if not problems and cfg.batch_ramp is not None:
        ramp_start_epochs(cfg.batch_ramp)
    if not problems and cfg.batch_schedule is not None:
        schedule_stages(cfg.batch_schedule)
    return problems


def _decay_problems(cfg: Config) -> list[str]:
    return [msg for ok, msg in [
        (not cfg.scale_wd or cfg.optimizer in ("sgd", "adamw"), f"--scale-wd holds a timescale of decay that "
         f"shrinks the weights by lr x weight decay a step: --optimizer sgd or adamw, not {cfg.optimizer}"),
        (not cfg.scale_wd or cfg.weight_decay > 0, "--scale-wd scales --weight-decay, which is 0; give the weight "
         "decay of --base-batch-size")] if not ok]


def ramp_start_epochs(text: str) -> tuple[int, int]:
    """(START, EPOCHS) of --batch-ramp START:EPOCHS."""
    try:
        start, epochs = (int(v) for v in text.split(":"))
    except ValueError:
        raise ConfigError(f"--batch-ramp {text!r}: give START:EPOCHS, two integers, e.g. 128:5") from None
    if start < 1 or epochs < 1:
        raise ConfigError(f"--batch-ramp {text!r}: START and EPOCHS must be >= 1")
    return start, epochs


def schedule_stages(text: str) -> list[tuple[int, int]]:
    """[(batch, first epoch), ...] of --batch-schedule B:E,B:E,..."""
    try:
        stages = [tuple(int(v) for v in part.split(":")) for part in text.split(",")]
    except ValueError:
        stages = []
    if not stages or any(len(st) != 2 for st in stages):
        raise ConfigError(f"--batch-schedule {text!r}: give BATCH:EPOCH stages separated by commas, integers, e.g. "
                          "64:0,128:5,256:12")
    if any(b < 1 or e < 0 for b, e in stages):
        raise ConfigError(f"--batch-schedule {text!r}: batches must be >= 1 and epochs >= 0")
    return [(b, e) for b, e in stages]


register_remedy(Remedy(
    "sam", "SAM (Foret et al. 2021), ASAM (Kwon et al. 2021) and m-sharpness", SamFlags,
    active=lambda cfg: cfg.sam is not None, problems=_sam_problems,
    plan_problems=lambda cfg, plan: _divides("--sam-m", cfg.sam_m, plan),
    step=_sam))
register_remedy(Remedy(
    "ghost_batchnorm", "Ghost BatchNorm (Hoffer et al. 2017)", GhostBatchFlags,
    active=lambda cfg: bool(cfg.ghost_batch_size),
    problems=lambda cfg: [] if cfg.ghost_batch_size is None or cfg.ghost_batch_size >= 1 else [
        "--ghost-batch-size must be >= 1"],
    plan_problems=lambda cfg, plan: _divides("--ghost-batch-size", cfg.ghost_batch_size, plan),
    on_model=lambda model, cfg: ghost_batchnorm(model, cfg.ghost_batch_size)))
register_remedy(Remedy(
    "regime_adaptation", "regime adaptation (Hoffer et al. 2017): the small batch's optimizer steps", RegimeFlags,
    active=lambda cfg: cfg.regime_adaptation))
register_remedy(Remedy(
    "batch_growth", "batch ramp (Smith et al. 2018) and stepwise batch schedule (Merrill et al. 2025)",
    BatchGrowthFlags, active=lambda cfg: bool(cfg.batch_ramp or cfg.batch_schedule), problems=_growth_problems))
register_remedy(Remedy(
    "decay_scaling", "weight decay holding tau = B / (lr wd D) (Bergsma et al. 2025)", DecayScalingFlags,
    active=lambda cfg: cfg.scale_wd is not None, problems=_decay_problems))


@dataclass(frozen=True)
class Knobs:
    """What a recipe is given: the small batch (the lr's reference), the run's epochs and each remedy's setting."""

    small: int
    epochs: int
    _: KW_ONLY  # the fields below are keyword-only
    warmup_epochs: float = 5.0  # Goyal's gradual warmup
    ghost: int | None = 64  # Hoffer's ghost batch; None for a model without BatchNorm
    layerwise_lr: float = 5.0  # LARS's (trust coefficient 0.001) or LAMB's lr
    sam: float = 0.05
    ramp_epochs: int = 20


@dataclass(frozen=True)
class Recipe:
    """A remedy of the literature as the naive large batch changed by it: `changes(knobs)` the TrainConfig fields
    it sets."""

    description: str
    changes: Callable[[Knobs], dict[str, Any]]


RECIPES = {
    "goyal": Recipe("linear lr scaling + warmup (Goyal et al. 2017)",
                    lambda k: dict(scale_lr="linear", warmup_epochs=k.warmup_epochs)),
    "hoffer": Recipe("sqrt lr scaling + ghost BN + regime adaptation (Hoffer et al. 2017)",
                     lambda k: dict(scale_lr="sqrt", ghost_batch_size=k.ghost, regime_adaptation=True)),
    "lars": Recipe("LARS (You et al. 2017)", lambda k: dict(optimizer="lars", lr=k.layerwise_lr)),
    "lamb": Recipe("LAMB (You et al. 2019)", lambda k: dict(optimizer="lamb", lr=k.layerwise_lr)),
    "sam": Recipe("SAM (Foret et al. 2021)", lambda k: dict(sam=k.sam)),
    "ramp": Recipe("batch ramp (Smith et al. 2018)",
                   lambda k: dict(batch_ramp=f"{k.small}:{min(k.ramp_epochs, k.epochs)}", micro_batch_size=k.small)),
    # the lr by the square root (Adam's rule; under the linear rule holding tau changes nothing) and the weight
    # decay scaled so that tau stays the small batch's: x sqrt(large / small)
    "tau": Recipe("sqrt lr scaling + weight decay holding tau = B / (lr wd D) (Bergsma et al. 2025)",
                  lambda k: dict(scale_lr="sqrt", warmup_epochs=k.warmup_epochs, scale_wd="tau")),
}
