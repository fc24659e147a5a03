"""Training that diverges stops: the losses of the steps since the last check, and the weights, are checked for
finiteness on the device every `check_every` steps and at the epoch's end, in a few kernels and one host sync,
when every rank learns the first non-finite step of any rank. A run that diverged raises `TrainingDiverged`
before it writes a checkpoint, so the last one kept is finite."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from landscape.base.errors import UserError
from landscape.runtime.distributed import DistInfo, all_reduce_min

NONE = 2 ** 62  # "no bad step yet", above any step: the all-reduce keeps the smallest


class TrainingDiverged(UserError):
    """The loss or the weights stopped being finite; the message names the step, the lr and the likely cause."""

    def __init__(self, message: str, step: int, lr: float):
        super().__init__(message)
        self.step, self.lr = step, lr


class DivergenceWatch:
    """The first optimizer step (1-based) at which the loss or the weights were not finite, on every rank."""

    def __init__(self, model: nn.Module, info: DistInfo, check_every: int = 32):
        self.params, self.device, self.check_every = list(model.parameters()), info.device, check_every
        self.pending: list[tuple[int, float, list[Tensor]]] = []  # (step, lr, its detached losses) since the check

    def after_step(self, step: int, step_losses: list[Tensor], lr: float) -> tuple[int, float] | None:
        """Note optimizer step `step`'s losses (one per micro-batch) and lr; every check_every steps, check."""
        self.pending.append((step, lr, list(step_losses)))
        return self.check() if len(self.pending) >= self.check_every else None

    def check(self) -> tuple[int, float] | None:
        """The first step since the last check whose loss was not finite, or the last one when only the weights
        are not (its update made them so): (step, lr) on every rank, or None. Syncs with the host and the ranks."""
        steps = [step for step, _, losses in self.pending for _ in losses]
        at = torch.tensor([*steps, self.pending[-1][0] if self.pending else 0], device=self.device)
        values = torch.stack([*(t.float().reshape(()) for _, _, ls in self.pending for t in ls),
                              weight_norm(self.params).float().to(self.device)])
        first = all_reduce_min(torch.where(torch.isfinite(values), NONE, at).min())
        lrs = {step: lr for step, lr, _ in self.pending}
        self.pending = []
        return None if int(first) == NONE else (int(first), lrs.get(int(first), float("nan")))


def weight_norm(params: list[Tensor]) -> Tensor:
    """The 2-norm of all the tensors together, as a 0-d tensor on their device: inf or nan if any entry is."""
    total = getattr(torch.nn.utils, "get_total_norm", None)  # torch >= 2.6: one fused kernel per device and dtype
    if total is not None:
        return total([p.detach() for p in params], error_if_nonfinite=False)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.detach().float()) for p in params]))


def diverged_message(step: int, epoch: int, lr: float, kept: str, sam: float | None = None) -> str:
    """The one line of a diverged run: where, at which lr, the likely cause, and what was kept."""
    if not math.isfinite(lr) or lr <= 0:
        cause = f"the learning rate itself is {lr:g}; check --lr, --gamma and the schedule"
    else:
        cause = ("the learning rate is too large for this model and batch: lower --lr, or add --warmup-epochs"
                 + (f", or a smaller --sam rho than {sam:g}" if sam else ""))
    return (f"training diverged: the loss or the weights became non-finite at optimizer step {step} (epoch {epoch}, "
            f"lr {lr:.4g}); likely cause: {cause}; the last finite checkpoint is kept ({kept})")
