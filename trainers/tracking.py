"""Curvature while training: every --track-sharpness STEPS optimizer steps, the top eigenvalue of the Hessian of the
data loss (no weight decay) on a fixed subset of the training data, with BatchNorm in eval mode and in fp32
(landscape.curvature), logged beside the optimizer's stability threshold (landscape.curvature.edge). Lanczos starts
from the last eigenvector, which checkpoints keep, so a resumed run measures exactly as an uninterrupted one."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from landscape.core.grid_eval import select_samples
from landscape.curvature.edge import adam_preconditioner, stability_threshold, top_eigenvalue
from landscape.curvature.hessian import HessianOperator
from landscape.data.datasets import Dataset
from landscape.pipelines.inputs import rank_share
from landscape.runtime.distributed import DistInfo
from landscape.runtime.sources import TensorSource
from trainers.config import TrainConfig

TRACK_TOL = 1e-3  # Lanczos's relative tolerance on the tracked eigenvalue


class SharpnessTracker:
    """lambda_max every `cfg.track_sharpness` steps and at the run's last step, on the first `cfg.track_samples`
    of a fixed random subset of the training split (landscape.sharpness's --samples subset), split over ranks."""

    def __init__(self, cfg: TrainConfig, model: nn.Module, data: Dataset, info: DistInfo, last_step: int,
                 state: dict[str, Any] | None = None):
        self.cfg, self.model, self.info, self.last_step = cfg, model, info, last_step
        x, y = select_samples(data.x_train, data.y_train, min(cfg.track_samples, len(data.x_train)), "train")
        self.data = rank_share(TensorSource(x, y, info.device, cfg.eval_batch_size), info)
        self.metric = data.metric
        self.v = None if not state else state["v"].double().numpy()
        self.records: list[dict[str, Any]] = []

    def after_step(self, step: int, epoch: int, opt: torch.optim.Optimizer) -> None:
        """Measure after optimizer step `step` (1-based) when it is due; the record waits in `records`."""
        if step % self.cfg.track_sharpness and step != self.last_step:
            return
        op = HessianOperator(self.model, self.data, self.metric, batch_size=self.cfg.eval_batch_size)
        adam = self.cfg.optimizer in ("adam", "adamw")
        pre = adam_preconditioner(opt, list(self.model.parameters())) if adam else None
        lam, self.v = top_eigenvalue(op, self.v, TRACK_TOL, pre)
        self.model.train()  # the operator put it in eval mode (BatchNorm's running statistics, unchanged)
        lr = opt.param_groups[0]["lr"]
        threshold = stability_threshold(self.cfg.optimizer, lr, self.cfg.momentum, self.cfg.nesterov,
                                        self.cfg.betas[0])
        self.records.append({"kind": "sharpness", "epoch": epoch + 1, "step": step, "lr": lr, "lambda_max": lam,
                             "threshold": threshold, "preconditioned": pre is not None})

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps: the last eigenvector, Lanczos's next start."""
        return {} if self.v is None else {"v": torch.from_numpy(np.asarray(self.v, np.float64))}
