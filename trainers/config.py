"""What one training run is: `TrainConfig` (every field a flag of `python -m trainers.train`), and the batch plan,
optimizer and schedule it asks for (built by landscape.training)."""

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
from landscape.training.optim import (
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

WD_SCALINGS = ("tau",)  # Bergsma et al. 2025: hold AdamW's timescale of weight decay as the batch grows


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
    scale_wd: str | None = option(None, "tau: scale --weight-decay with the batch so that the timescale tau = B / "
                                  "(lr x weight decay x D) of --base-batch-size at --lr holds at --batch-size and its "
                                  "scaled lr (Bergsma et al. 2025): weight decay x (B / base) x (lr / scaled lr); sgd "
                                  "and adamw, whose decay shrinks the weights by lr x weight decay a step",
                                  choices=WD_SCALINGS, group="large-batch remedies")
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
    regime_adaptation: bool = option(False, "Hoffer et al. 2017: train as many optimizer steps as --base-batch-size "
                                     "takes in --epochs (a batch k times larger trains k times the epochs), with the "
                                     "schedule's warmup and milestones stretched alike", group="large-batch remedies")
    sam: float | None = option(None, "Sharpness-Aware Minimization (Foret et al. 2021) around the optimizer, with "
                               "ascent radius RHO (0.05 is the paper's)", metavar="RHO", group="large-batch remedies")
    sam_adaptive: bool = option(False, "ASAM (Kwon et al. 2021): the ascent scaled by the weights' magnitudes",
                                group="large-batch remedies")
    sam_m: int | None = option(None, "m-sharpness: an ascent per M samples (M divides the micro-batch); default "
                               "the rank's whole batch", metavar="M", group="large-batch remedies")
    batch_ramp: str | None = option(None, "batch-size warmup (Smith et al. 2018): the global batch grows linearly from "
                                    "START to --batch-size over EPOCHS epochs, by accumulation steps (START a "
                                    "multiple of micro-batch x ranks); the schedule follows the samples seen",
                                    metavar="START:EPOCHS", group="large-batch remedies")
    batch_schedule: str | None = option(None, "a stepwise batch (Merrill et al. 2025): BATCH:EPOCH stages, e.g. "
                                        "64:0,128:5,256:12, the first at epoch 0, the last at --batch-size, each a "
                                        "whole number of micro-batches x ranks; the lr follows each stage's batch by "
                                        "--scale-lr's rule, and the schedule the samples seen",
                                        metavar="B:E,...", group="large-batch remedies")
    track_sharpness: int | None = option(None, "every STEPS optimizer steps (and at the last), the top Hessian "
                                         "eigenvalue of the data loss on --track-samples training samples, beside "
                                         "the optimizer's stability threshold (Cohen et al. 2021), in metrics.jsonl",
                                         metavar="STEPS", group="tracking")
    track_noise: int | None = option(None, "every STEPS optimizer steps, the gradient noise scale B_simple "
                                     "(McCandlish et al. 2018) from the step's own gradients where it can, in "
                                     "metrics.jsonl", metavar="STEPS", group="tracking")
    tensorboard: bool = option(False, "also write TensorBoard event files to OUT/tensorboard (loss, accuracy, lr, "
                               "throughput, and what --track-* measure)", group="tracking")
    track_samples: int = option(512, "the training samples --track-sharpness measures on (a fixed random subset, "
                                "landscape.sharpness --samples's)", metavar="N", group="tracking")
    ghost_batch_size: int | None = option(None, "Ghost BatchNorm (Hoffer et al. 2017): in training, every BatchNorm "
                                          "normalizes over chunks of N samples of each micro-batch (N must divide "
                                          "it); evaluation and the saved model are plain BatchNorm", metavar="N",
                                          group="large-batch remedies")
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
                  (self.ghost_batch_size is None or self.ghost_batch_size >= 1, "--ghost-batch-size must be >= 1"),
                  (self.sam is None or self.sam > 0, "--sam must be > 0 (the ascent radius rho), or left out"),
                  (self.sam is not None or not (self.sam_adaptive or self.sam_m), "--sam-m and --sam-adaptive need "
                   "--sam RHO"),
                  (not (self.batch_ramp and self.regime_adaptation), "--batch-ramp and --regime-adaptation do not "
                   "combine: regime adaptation matches the optimizer steps of a fixed batch, and a ramp's smaller "
                   "early batches take more steps; give one of them"),
                  (not (self.batch_schedule and (self.batch_ramp or self.regime_adaptation)), "--batch-schedule "
                   "does not combine with --batch-ramp or --regime-adaptation: each sets how the batch or the steps "
                   "grow; give one of them"),
                  (not self.batch_schedule or self.scale_lr, "--batch-schedule applies the lr rule at each change of "
                   "batch: give --scale-lr linear (SGD) or sqrt (Adam), with --base-batch-size"),
                  (self.sam_m is None or self.sam_m >= 1, "--sam-m must be >= 1"),
                  (not self.scale_wd or self.optimizer in ("sgd", "adamw"), f"--scale-wd holds a timescale of "
                   f"decay that shrinks the weights by lr x weight decay a step: --optimizer sgd or adamw, not "
                   f"{self.optimizer}"),
                  (not self.scale_wd or self.weight_decay > 0, "--scale-wd scales --weight-decay, which is 0; give "
                   "the weight decay of --base-batch-size"),
                  (self.track_sharpness is None or self.track_sharpness >= 1, "--track-sharpness must be >= 1"),
                  (self.track_samples >= 1, "--track-samples must be >= 1"),
                  (self.track_noise is None or self.track_noise >= 1, "--track-noise must be >= 1"),
                  (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "--betas takes two values in [0, 1)"),
                  (min(self.eval_every, self.save_every, self.log_every, self.eval_batch_size) >= 1,
                   "--eval-every/--save-every/--log-every/--eval-batch-size must be >= 1")]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)
        if self.batch_ramp is not None:
            ramp_start_epochs(self.batch_ramp)
        if self.batch_schedule is not None:
            schedule_stages(self.batch_schedule)
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
    """cfg's batch plan on `world_size` ranks over `n_train` samples (landscape.training.make_plan); a ghost batch
    must divide the micro-batch, the forward that BatchNorm sees."""
    plan = make_plan(cfg.batch_size, world_size, n_train, cfg.micro_batch_size)
    for flag, n in [("--ghost-batch-size", cfg.ghost_batch_size), ("--sam-m", cfg.sam_m)]:
        if n and plan.micro_batch_size % n:
            raise ConfigError(f"{flag} {n} does not divide the micro-batch of {plan.micro_batch_size} samples per "
                              "forward; choose a divisor of it")
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
    opt = make_optimizer(model, cfg.optimizer, peak_lr(cfg), weight_decay_of(cfg), cfg.momentum,
                         cfg.nesterov, cfg.betas)
    schedule = schedule_of(cfg, plan.steps_per_epoch, length)
    return opt, make_scheduler(opt, schedule if ramp is None else RampedSchedule(schedule, ramp))
