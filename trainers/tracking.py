"""Curvature and gradient noise while training. Every --track-sharpness STEPS optimizer steps: the top eigenvalue
of the Hessian of the data loss (no weight decay) on a fixed subset of the training data, with BatchNorm in eval
mode and in fp32 (landscape.curvature), beside the optimizer's stability threshold (landscape.curvature.edge);
Lanczos starts from the last eigenvector, which checkpoints keep, so a resumed run measures exactly as an
uninterrupted one. Every --track-noise STEPS: the gradient noise scale B_simple (NoiseTracker)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from landscape.base.config import CURVATURES
from landscape.base.errors import ConfigError
from landscape.base.flags import option
from landscape.core.grid_eval import select_samples
from landscape.data.datasets import Dataset
from landscape.monitoring.monitor import Monitor
from landscape.monitoring.noise import b_simple_of
from landscape.runtime.distributed import DistInfo

TRACK_TOL = 1e-3  # Lanczos's relative tolerance on the tracked eigenvalue
GROUP = "tracking"  # the trackers' flags in --help
Config = Any  # a trainers.config.TrainConfig, which is made of TrackingFlags among its pieces


@dataclass(frozen=True, kw_only=True)
class TrackingFlags:
    """What the run measures while it trains, and where it reports it: the trackers' piece of TrainConfig."""

    track_sharpness: int | None = option(None, "every STEPS optimizer steps (and at the last), the top Hessian "
                                         "eigenvalue of the data loss on --track-samples training samples, beside "
                                         "the optimizer's stability threshold (Cohen et al. 2021), in metrics.jsonl",
                                         metavar="STEPS", group=GROUP)
    track_curvature: str = option("hessian", "whose top eigenvalue --track-sharpness measures: the Hessian (what "
                                  "the stability threshold bounds), or the Gauss-Newton or a Fisher (cheaper "
                                  "companions; the threshold in the record is still the Hessian's)",
                                  choices=CURVATURES, group=GROUP)
    track_samples: int = option(512, "the training samples --track-sharpness measures on (a fixed random subset, "
                                "landscape.sharpness --samples's)", metavar="N", group=GROUP)
    track_noise: int | None = option(None, "every STEPS optimizer steps, the gradient noise scale B_simple "
                                     "(McCandlish et al. 2018) from the step's own gradients where it can, in "
                                     "metrics.jsonl", metavar="STEPS", group=GROUP)
    tensorboard: bool = option(False, "also write TensorBoard event files to OUT/tensorboard (loss, accuracy, lr, "
                               "throughput, and what --track-* measure)", group=GROUP)


def check_tracking(cfg: TrackingFlags) -> None:
    for ok, msg in [(cfg.track_sharpness is None or cfg.track_sharpness >= 1, "--track-sharpness must be >= 1"),
                    (cfg.track_samples >= 1, "--track-samples must be >= 1"),
                    (cfg.track_noise is None or cfg.track_noise >= 1, "--track-noise must be >= 1")]:
        if not ok:
            raise ConfigError(msg)


class SharpnessTracker:
    """lambda_max every `cfg.track_sharpness` steps and at the run's last step, on the first `cfg.track_samples`
    of a fixed random subset of the training split (landscape.sharpness's --samples subset), split over ranks: a
    landscape.Monitor measuring lambda_max, the trainer's records keyed by kind and epoch."""

    def __init__(self, cfg: Config, model: nn.Module, data: Dataset, info: DistInfo, last_step: int,
                 state: dict[str, Any] | None = None):
        self.cfg, self.last_step = cfg, last_step
        x, y = select_samples(data.x_train, data.y_train, min(cfg.track_samples, len(data.x_train)), "train")
        self.monitor = Monitor(model, (x, y), None, every=cfg.track_sharpness, measures=("lambda_max",),
                               metric=data.metric, samples=len(x), tol=TRACK_TOL, batch_size=cfg.eval_batch_size,
                               curvature=cfg.track_curvature)
        if state:
            self.monitor.load_state_dict({"steps": 0, "v": state["v"]})
        self.records: list[dict[str, Any]] = []

    def after_step(self, step: int, epoch: int, opt: torch.optim.Optimizer) -> None:
        """Measure after optimizer step `step` (1-based) when it is due; the record waits in `records`."""
        if step % self.cfg.track_sharpness and step != self.last_step:
            return
        self.monitor.optimizer, self.monitor.steps = opt, step
        r = self.monitor.measure()
        self.records.append({"kind": "sharpness", "epoch": epoch + 1, "step": step, "lr": r["lr"],
                             "lambda_max": r["lambda_max"], "curvature": r["curvature"], "threshold": r["threshold"],
                             "preconditioned": r["preconditioned"]})

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps: the last eigenvector, Lanczos's next start."""
        v = self.monitor.state_dict()["v"]
        return {} if v is None else {"v": v}


class NoiseTracker:
    """The gradient noise scale B_simple = tr(Sigma) / |G|^2 (McCandlish et al. 2018) every `cfg.track_noise` steps:
    a landscape.Monitor measuring the noise scale, from the gradients the step computes where it can (under DDP each
    rank's own gradient against their mean; in one process with gradient accumulation each micro-batch's gradient
    against the step's), else (one process, one micro-batch per step, or SAM, whose gradient is taken elsewhere) on
    8 fresh micro-batches of the training set, on its own random generator and with BatchNorm's statistics
    restored, so training is unchanged. The records' `source` is the Monitor's `noise_source`."""

    def __init__(self, cfg: Config, ddp_model: nn.Module, data: Dataset, plan: Any, first_step: int):
        self.cfg = cfg
        micro = max(1, min(plan.per_rank_batch_size, len(data.x_train) // 8) // 8)
        self.monitor = Monitor(ddp_model, (data.x_train, data.y_train), None, every=cfg.track_noise,
                               measures=("noise",), metric=data.metric, noise_batch=micro, noise_batches=8,
                               seed=cfg.seed, noise_from="draws" if cfg.sam is not None else "auto",
                               step_batch=plan.per_rank_batch_size)
        self.monitor.load_state_dict({"steps": first_step, "v": None})  # the step a resumed run starts after
        self.records: list[dict[str, Any]] = []

    def before_step(self, plan: Any) -> None:
        """This step's batch on each rank (a batch ramp changes it between epochs)."""
        self.monitor.step_batch = plan.per_rank_batch_size

    def after_step(self, step: int, epoch: int) -> None:
        r = self.monitor.step(step)
        if r is not None:
            found = {k: v for k, v in r.items() if k not in ("step", "noise_source")}
            self.records.append({"kind": "noise", "epoch": epoch + 1, "step": step, "source": r["noise_source"],
                                 **found})

    def epoch_summary(self) -> dict[str, Any]:
        """The epoch's B_simple (noise_b_simple): averaged numerator over averaged denominator, never a mean of
        ratios; null with the reason where that |G|^2 is not positive; {} when the epoch measured none."""
        measured = [r for r in self.records if r["kind"] == "noise"]
        if not measured:
            return {}
        found = b_simple_of(sum(r["g2"] for r in measured), sum(r["trace_sigma"] for r in measured))
        return {f"noise_{k}": v for k, v in found.items()}


class Tracking:
    """What a run measures while it trains (either tracker may be absent): told each step's batch before it, and
    asked after every optimizer step."""

    def __init__(self, sharpness: SharpnessTracker | None, noise: NoiseTracker | None):
        self.sharpness, self.noise = sharpness, noise

    def before_step(self, plan: Any) -> None:
        if self.noise is not None:
            self.noise.before_step(plan)

    def after_step(self, step: int, epoch: int, opt: torch.optim.Optimizer) -> None:
        if self.noise is not None:
            self.noise.after_step(step, epoch)
        if self.sharpness is not None:
            self.sharpness.after_step(step, epoch, opt)

    def epoch_records(self) -> tuple[list[dict[str, Any]], dict[str, float]]:
        """The epoch's step records (in step order) and what goes into its epoch record; then forgets them."""
        records = [*(self.noise.records if self.noise else []), *(self.sharpness.records if self.sharpness else [])]
        summary = self.noise.epoch_summary() if self.noise is not None else {}
        for tracker in (self.noise, self.sharpness):
            if tracker is not None:
                tracker.records.clear()
        return sorted(records, key=lambda r: (r["step"], r["kind"])), summary

    def state(self) -> dict[str, Any] | None:
        return self.sharpness.state() if self.sharpness is not None else None
