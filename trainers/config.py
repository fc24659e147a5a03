"""What one training run is: `TrainConfig` (every field a flag of `python -m trainers.train`), made of the run's
own pieces, the remedies' and the trackers', and the batch plan, optimizer and schedule it asks for (built by
landscape.optim)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from landscape.base.config import DEVICES, PRECISIONS, check_choice
from landscape.base.errors import ConfigError
from landscape.base.flags import json_object, option
from landscape.data.datasets import list_datasets
from landscape.models.registry import list_models
from landscape.optim.builders import (
    LR_SCALINGS,
    OPTIMIZERS,
    SCHEDULES,
    BatchPlan,
    GrowingBatch,
    RampedSchedule,
    Schedule,
    make_batch_schedule,
    make_optimizer,
    make_plan,
    make_ramp,
    make_scheduler,
    scaled_lr,
)
from trainers.remedies import (
    BatchGrowthFlags,
    DecayScalingFlags,
    GhostBatchFlags,
    RegimeFlags,
    SamFlags,
    check_remedies,
    check_remedies_on_plan,
    ramp_start_epochs,
    schedule_stages,
)
from trainers.tracking import TrackingFlags, check_tracking


@dataclass(frozen=True, kw_only=True)
class RunFlags:
    """Where the run goes, and what it trains on."""

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


@dataclass(frozen=True, kw_only=True)
class OptimFlags:
    """The batch, the optimizer and its learning-rate schedule (landscape.optim.builders builds them)."""

    batch_size: int = option(128, "global batch size (all ranks, all micro-batches)", group="optimization")
    micro_batch_size: int | None = option(None, "largest per-rank forward; larger per-rank batches use gradient "
                                          "accumulation", group="optimization")
    epochs: int = option(10, "epochs to train", group="optimization")
    optimizer: str = option("sgd", "the optimizer; lars and lamb (You et al. 2017, 2019) are timm's, with biases and "
                            "normalization parameters left out of weight decay and of the trust ratio",
                            choices=OPTIMIZERS, group="optimization")
    lr: float = option(0.1, "peak learning rate (at --base-batch-size with --scale-lr)", group="optimization")
    momentum: float = option(0.9, "SGD and LARS momentum", group="optimization")
    betas: tuple[float, float] = option((0.9, 0.999), "Adam/AdamW/LAMB beta1 beta2 (language models: 0.9 0.95)",
                                        group="optimization")
    nesterov: bool = option(False, "Nesterov momentum", group="optimization")
    weight_decay: float = option(0.0, "weight decay: L2 added to the gradient (sgd, adam), decoupled (adamw)",
                                 group="optimization")
    schedule: str = option("constant", "learning-rate schedule", choices=SCHEDULES, group="optimization")
    milestones: tuple[int, ...] = option((), "epochs where --schedule step multiplies the lr by --gamma",
                                         group="optimization")
    gamma: float = option(0.1, "lr decay factor at each milestone", group="optimization")
    warmup_epochs: float = option(0.0, "linear warmup (Goyal et al. 2017)", group="optimization")
    scale_lr: str | None = option(None, "scale --lr with the batch: linear (Goyal et al. 2017), lr x batch-size / "
                                  "base-batch-size, or sqrt (Hoffer et al. 2017), lr x sqrt(batch-size / "
                                  "base-batch-size); given bare, linear", choices=LR_SCALINGS, const="linear",
                                  metavar="RULE", group="optimization")
    base_batch_size: int = option(128, "the batch size --lr is given for, with --scale-lr", group="optimization")
    seed: int = option(0, "seed of the initialization and the data order", group="optimization")


@dataclass(frozen=True, kw_only=True)
class RuntimeFlags:
    """How the run executes and reports: none of these changes what it trains (TrainConfig.identity leaves them
    out, so a resume may change them)."""

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


@dataclass(frozen=True, kw_only=True)
class TrainConfig(RuntimeFlags, TrackingFlags, DecayScalingFlags, BatchGrowthFlags, RegimeFlags, GhostBatchFlags,
                  SamFlags, OptimFlags, RunFlags):  # a dataclass takes the last base's fields first: --help's order
    """One training run; every field is a flag of `python -m trainers.train` under the same name. It is made of
    pieces: the run's own (RunFlags, OptimFlags, RuntimeFlags), each remedy's (trainers.remedies) and the
    trackers' (trainers.tracking), which own their fields and their checks; stored flat, as 0.8 stored it."""

    def __post_init__(self) -> None:
        if isinstance(self.scale_lr, bool):  # runs stored by 0.7 and earlier, and Python callers: a switch for linear
            object.__setattr__(self, "scale_lr", "linear" if self.scale_lr else None)
        finite = all(math.isfinite(v) for v in (self.lr, self.momentum, self.weight_decay, self.gamma,
                                                 self.warmup_epochs, self.sam or 0.0))
        checks = [(finite, f"{self._non_finite()} is not a finite number; give a finite value"),
                  (self.batch_size >= 1, "--batch-size must be >= 1"),
                  (self.base_batch_size >= 1, "--base-batch-size must be >= 1"),
                  (self.epochs >= 1, "--epochs must be >= 1"),
                  (self.lr > 0, f"--lr must be > 0, got {self.lr:g}"),
                  (self.momentum >= 0, f"--momentum must be >= 0, got {self.momentum:g}"),
                  (self.gamma > 0, f"--gamma must be > 0 (the lr's factor at each milestone), got {self.gamma:g}"),
                  (self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay:g}"),
                  (self.micro_batch_size is None or self.micro_batch_size >= 1, "--micro-batch-size must be >= 1"),
                  (self.warmup_epochs >= 0, "--warmup-epochs must be >= 0"),
                  (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "--betas takes two values in [0, 1)"),
                  (min(self.eval_every, self.save_every, self.log_every, self.eval_batch_size) >= 1,
                   "--eval-every/--save-every/--log-every/--eval-batch-size must be >= 1")]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)
        check_remedies(self)
        check_tracking(self)
        for value, choices, flag in [(self.optimizer, OPTIMIZERS, "--optimizer"),
                                     (self.schedule, SCHEDULES, "--schedule"),
                                     (self.precision, PRECISIONS, "--precision"), (self.device, DEVICES, "--device"),
                                     *([(self.scale_lr, LR_SCALINGS, "--scale-lr")] if self.scale_lr else [])]:
            check_choice(value, choices, flag)

    def _non_finite(self) -> str:
        values = {"--lr": self.lr, "--momentum": self.momentum, "--weight-decay": self.weight_decay,
                  "--gamma": self.gamma, "--warmup-epochs": self.warmup_epochs, "--sam": self.sam or 0.0}
        return next((f"{k} {v}" for k, v in values.items() if not math.isfinite(v)), "")

    def identity(self) -> dict[str, Any]:
        """The fields that define the run: a resume must match them all."""
        skip = {"out", "data_dir", "download", "device", "compile", "eval_batch_size", "eval_every",
                "save_every", "log_every", "resume", "progress"}
        return {k: v for k, v in plain(dataclasses.asdict(self)).items() if k not in skip}


def plain(obj: Any) -> Any:
    """Tuples to lists, recursively: what JSON and weights_only checkpoints hold."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


def ramp_of(cfg: TrainConfig, plan: BatchPlan, length: RunLength, n_train: int) -> GrowingBatch | None:
    """cfg's growing batch: its batch ramp or batch schedule, refused when it is longer than the run."""
    if cfg.batch_schedule is not None:
        stages = schedule_stages(cfg.batch_schedule)
        if stages[-1][1] >= length.epochs:
            raise ConfigError(f"--batch-schedule {cfg.batch_schedule}: its last stage starts at epoch {stages[-1][1]} "
                              f"but the run trains {length.epochs}; start every stage within the run")
        return make_batch_schedule(plan, stages, n_train, cfg.scale_lr)
    if cfg.batch_ramp is None:
        return None
    start, epochs = ramp_start_epochs(cfg.batch_ramp)
    if epochs > length.epochs:
        raise ConfigError(f"--batch-ramp {cfg.batch_ramp} grows the batch over {epochs} epochs but the run trains "
                          f"{length.epochs}; make the ramp shorter than the run")
    return make_ramp(plan, start, epochs, n_train)


def plan_of(cfg: TrainConfig, world_size: int, n_train: int) -> BatchPlan:
    """cfg's batch plan on `world_size` ranks over `n_train` samples (landscape.optim.make_plan), checked by
    the run's remedies (a ghost batch or SAM's m must divide the micro-batch, the forward they see)."""
    plan = make_plan(cfg.batch_size, world_size, n_train, cfg.micro_batch_size)
    check_remedies_on_plan(cfg, plan)
    return plan


def peak_lr(cfg: TrainConfig) -> float:
    """--lr, scaled by --scale-lr: times batch-size / base-batch-size (linear) or its square root (sqrt)."""
    return scaled_lr(cfg.lr, cfg.batch_size, cfg.base_batch_size, cfg.scale_lr)


def weight_decay_of(cfg: TrainConfig) -> float:
    """--weight-decay, with --scale-wd tau times (B / base) x (lr / scaled lr), so that tau_of is the base batch's."""
    if cfg.scale_wd != "tau":
        return cfg.weight_decay
    return cfg.weight_decay * (cfg.batch_size / cfg.base_batch_size) * (cfg.lr / peak_lr(cfg))


def tau_of(batch: int, lr: float, weight_decay: float, n_train: int) -> float | None:
    """Bergsma et al. (2025)'s timescale of weight decay in epochs, tau = B / (lr x weight decay x D): over about
    tau epochs the decay averages the updates (AdamW's exponential moving average; SGD's L2 shrinks the weights
    alike); None without weight decay (infinite)."""
    return batch / (lr * weight_decay * n_train) if weight_decay > 0 and lr > 0 else None


@dataclass(frozen=True)
class RunLength:
    """How long a run trains: its epochs, and the factor by which its schedule's warmup and milestones stretch
    (regime adaptation), 1 otherwise."""

    epochs: int
    stretch: float = 1.0


def run_length(cfg: TrainConfig, plan: BatchPlan, n_train: int) -> RunLength:
    """--epochs, or with --regime-adaptation the epochs in which this batch takes as many optimizer steps as
    --base-batch-size takes in --epochs (rounded up to whole epochs)."""
    if not cfg.regime_adaptation:
        return RunLength(cfg.epochs)
    reference = cfg.epochs * (n_train // cfg.base_batch_size)
    if reference == 0:
        raise ConfigError(f"--base-batch-size {cfg.base_batch_size} exceeds the {n_train} training samples, so "
                          "--regime-adaptation has no steps to match; use a smaller --base-batch-size")
    epochs = math.ceil(reference / plan.steps_per_epoch)
    return RunLength(epochs, epochs / cfg.epochs)


def schedule_of(cfg: TrainConfig, steps_per_epoch: int, length: RunLength | None = None) -> Schedule:
    """cfg's learning-rate schedule over `length` (default: --epochs), its warmup and milestones stretched."""
    length = length or RunLength(cfg.epochs)
    s = length.stretch
    return Schedule(cfg.schedule, length.epochs, steps_per_epoch, cfg.warmup_epochs * s, cfg.gamma,
                    tuple(m * s for m in cfg.milestones))


def optimizer_of(model: nn.Module, cfg: TrainConfig, plan: BatchPlan, length: RunLength | None = None,
                 ramp: GrowingBatch | None = None) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """cfg's optimizer over the model's parameters, and its schedule stepped once per optimizer step (with a batch
    ramp, followed in samples seen)."""
    opt = make_optimizer(model, cfg.optimizer, peak_lr(cfg), weight_decay=weight_decay_of(cfg), momentum=cfg.momentum,
                         nesterov=cfg.nesterov, betas=cfg.betas)
    schedule = schedule_of(cfg, plan.steps_per_epoch, length)
    return opt, make_scheduler(opt, schedule if ramp is None else RampedSchedule(schedule, ramp))
