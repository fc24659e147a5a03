"""Curvature and gradient noise while training. Every --track-sharpness STEPS optimizer steps: the top eigenvalue
of the Hessian of the data loss (no weight decay) on a fixed subset of the training data, with BatchNorm in eval
mode and in fp32 (landscape.curvature), beside the optimizer's stability threshold (landscape.curvature.edge);
Lanczos starts from the last eigenvector, which checkpoints keep, so a resumed run measures exactly as an
uninterrupted one. Every --track-noise STEPS: the gradient noise scale B_simple (NoiseTracker)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from landscape.core.grid_eval import select_samples
from landscape.data.datasets import Dataset
from landscape.monitoring.monitor import Monitor
from landscape.monitoring.noise import b_simple_of, estimate_noise, two_batch_estimate
from landscape.runtime.distributed import DistInfo, all_reduce_sum
from landscape.runtime.forward import batchnorm_statistics_kept
from trainers.config import TrainConfig

TRACK_TOL = 1e-3  # Lanczos's relative tolerance on the tracked eigenvalue


class SharpnessTracker:
    """lambda_max every `cfg.track_sharpness` steps and at the run's last step, on the first `cfg.track_samples`
    of a fixed random subset of the training split (landscape.sharpness's --samples subset), split over ranks: a
    landscape.Monitor measuring lambda_max, the trainer's records keyed by kind and epoch."""

    def __init__(self, cfg: TrainConfig, model: nn.Module, data: Dataset, info: DistInfo, last_step: int,
                 state: dict[str, Any] | None = None):
        self.cfg, self.last_step = cfg, last_step
        x, y = select_samples(data.x_train, data.y_train, min(cfg.track_samples, len(data.x_train)), "train")
        self.monitor = Monitor(model, (x, y), None, every=cfg.track_sharpness, measures=("lambda_max",),
                               metric=data.metric, samples=len(x), tol=TRACK_TOL, batch_size=cfg.eval_batch_size)
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
                             "lambda_max": r["lambda_max"], "threshold": r["threshold"],
                             "preconditioned": r["preconditioned"]})

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps: the last eigenvector, Lanczos's next start."""
        v = self.monitor.state_dict()["v"]
        return {} if v is None else {"v": v}


class NoiseTracker:
    """The gradient noise scale B_simple = tr(Sigma) / |G|^2 (McCandlish et al. 2018) every `cfg.track_noise`
    steps, by the two-batch-size estimate of landscape.monitoring.noise, from the gradients the step computes where it
    can: under DDP each rank's own gradient (caught by a communication hook before the all-reduce; small batch = the
    rank's batch) against their mean (big batch = the global one); in one process with gradient accumulation each
    micro-batch's gradient (a copy per micro-batch) against the step's. Otherwise (one process, one micro-batch per
    step, or SAM, whose gradient is taken elsewhere) the estimator runs on 8 fresh micro-batches of the training set,
    on its own random generator and with BatchNorm's statistics restored, so training is unchanged."""

    def __init__(self, cfg: TrainConfig, model: nn.Module, ddp_model: nn.Module, data: Dataset, plan: Any,
                 info: DistInfo):
        self.cfg, self.model, self.data, self.plan, self.info = cfg, model, data, plan, info
        if cfg.sam is None and info.is_distributed:
            self.source = "ddp"
            self.hook = _LocalNorms()
            getattr(ddp_model, "_orig_mod", ddp_model).register_comm_hook(self.hook, _LocalNorms.allreduce)
        else:
            self.source = "micro-batches" if cfg.sam is None and plan.accumulation_steps > 1 else "estimator"
        self.records: list[dict[str, Any]] = []
        self._pending: dict[str, float] | None = None

    def observer(self, step: int, plan: Any) -> Any:
        """The train step's GradientObserver when `step` is measured from the step's own gradients, else None."""
        if step % self.cfg.track_noise or self.source == "estimator":
            return None
        if self.source == "ddp":
            return RankNoise(self, plan)
        return MicroBatchNoise(self, plan)

    def after_step(self, step: int, epoch: int) -> None:
        if step % self.cfg.track_noise:
            return
        if self.source == "estimator":
            self._pending = self._estimate(step)
        if self._pending is not None:
            self.records.append({"kind": "noise", "epoch": epoch + 1, "step": step, "source": self.source,
                                 **self._pending})
            self._pending = None

    def epoch_summary(self) -> dict[str, Any]:
        """The epoch's B_simple (noise_b_simple): averaged numerator over averaged denominator, never a mean of
        ratios; null with the reason where that |G|^2 is not positive; {} when the epoch measured none."""
        measured = [r for r in self.records if r["kind"] == "noise"]
        if not measured:
            return {}
        found = b_simple_of(sum(r["g2"] for r in measured), sum(r["trace_sigma"] for r in measured))
        return {f"noise_{k}": v for k, v in found.items()}

    def record(self, g2_small: float, g2_big: float, small: int, big: int) -> None:
        """The two-batch estimate from |G_small|^2 (mean over the small batches) and |G_big|^2."""
        est = two_batch_estimate(g2_small, g2_big, small, big)
        self._pending = {"g2": est.g2, "trace_sigma": est.trace_sigma, **b_simple_of(est.g2, est.trace_sigma),
                         "b_small": small, "b_big": big}

    def _estimate(self, step: int) -> dict[str, float]:
        per_rank = self.plan.per_rank_batch_size
        micro = max(1, min(per_rank, len(self.data.x_train) // 8) // 8)
        generator = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + step)
        with batchnorm_statistics_kept(self.model):
            est = estimate_noise(self.model, self.data.x_train, self.data.y_train, micro, generator)
        return {"g2": est.g2, "trace_sigma": est.trace_sigma, **b_simple_of(est.g2, est.trace_sigma),
                "b_small": micro, "b_big": micro * 8}


def _flat_grad(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1).double() for p in model.parameters() if p.grad is not None])


class MicroBatchNoise:
    """One process with accumulation: micro-batch k's gradient is the growth of .grad times the steps."""

    def __init__(self, tracker: NoiseTracker, plan: Any):
        self.tracker, self.plan, self.previous, self.sum_sq = tracker, plan, None, 0.0

    def after_backward(self, micro: int) -> None:
        now = _flat_grad(self.tracker.model)
        grown = now if self.previous is None else now - self.previous
        self.sum_sq += float((grown * self.plan.accumulation_steps).pow(2).sum())
        self.previous = now

    def before_update(self) -> None:
        g2_big = float(self.previous.pow(2).sum())
        self.tracker.record(self.sum_sq / self.plan.accumulation_steps, g2_big, self.plan.micro_batch_size,
                            self.plan.per_rank_batch_size)


class RankNoise:
    """DDP: each rank's gradient, squared by the hook before the all-reduce; the all-reduced mean from .grad."""

    def __init__(self, tracker: NoiseTracker, plan: Any):
        self.tracker, self.plan = tracker, plan
        tracker.hook.active, tracker.hook.sum_sq = True, torch.zeros((), dtype=torch.float64)

    def after_backward(self, micro: int) -> None:
        pass

    def before_update(self) -> None:
        hook = self.tracker.hook
        hook.active = False
        local = hook.sum_sq.to(self.tracker.info.device)
        g2_small = float(all_reduce_sum(local)) / self.plan.world_size
        g2_big = float(_flat_grad(self.tracker.model).pow(2).sum())
        self.tracker.record(g2_small, g2_big, self.plan.per_rank_batch_size, self.plan.global_batch_size)


class _LocalNorms:
    """DDP communication hook state: while active, the squared norm of this rank's gradient buckets."""

    def __init__(self):
        self.active, self.sum_sq = False, torch.zeros((), dtype=torch.float64)

    @staticmethod
    def allreduce(state, bucket):  # no annotations: DDP checks them against its own classes, and ours are strings
        """The default all-reduce, having squared the bucket's local gradients first when active."""
        if state.active:
            state.sum_sq = state.sum_sq + bucket.buffer().detach().double().pow(2).sum().cpu()
        return default_hooks.allreduce_hook(None, bucket)


class Tracking:
    """What a run measures while it trains (either tracker may be absent): asked after every optimizer step, and
    for an observer of the step's gradients before it."""

    def __init__(self, sharpness: SharpnessTracker | None, noise: NoiseTracker | None):
        self.sharpness, self.noise = sharpness, noise

    def observer(self, step: int, plan: Any) -> Any:
        return self.noise.observer(step, plan) if self.noise is not None else None

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
