"""Loss and accuracy of a model over tensors already on the device, as exact sums and counts.

Shared by the trainer (stored checkpoint metrics) and the surface engine (every grid point), so the centre
of a surface reproduces the checkpoint's numbers. The model is evaluated in eval mode: BatchNorm uses its
running statistics, as in Li et al.; no batch statistics leak into the landscape.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from landscape.errors import UnknownNameError

# A criterion maps (outputs, targets) to (sum of per-sample losses, number correct), float64 scalar tensors.
Criterion = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


def _at_least_fp32(out: Tensor) -> Tensor:
    """Losses are computed in fp32 even under bf16 autocast (and in fp64 for fp64 models)."""
    return out.float() if out.dtype in (torch.float16, torch.bfloat16) else out


def cross_entropy_sums(out: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    out = _at_least_fp32(out)
    # per-sample losses summed in float64: a float32 sum over 50,000 samples would lose digits
    return (F.cross_entropy(out, y, reduction="none").sum(dtype=torch.float64),
            (out.argmax(1) == y).sum(dtype=torch.float64))


def mse_sums(out: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Sum over samples of the squared error summed over outputs; regression has no accuracy (NaN)."""
    err = out.double() - y.double().view_as(out)
    return err.pow(2).sum(), torch.tensor(float("nan"), dtype=torch.float64, device=out.device)


CRITERIA: dict[str, Criterion] = {"cross_entropy": cross_entropy_sums, "mse": mse_sums}


def get_criterion(name: str) -> Criterion:
    if name not in CRITERIA:
        raise UnknownNameError(f"unknown loss {name!r}; choose one of: {', '.join(CRITERIA)}")
    return CRITERIA[name]


@dataclass(frozen=True)
class Sums:
    loss_sum: float
    correct: float
    count: int

    @property
    def loss(self) -> float:
        return self.loss_sum / self.count

    @property
    def acc(self) -> float:
        """Accuracy in percent (the reference implementation's unit)."""
        return 100.0 * self.correct / self.count


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' is bf16 autocast on CUDA and fp32 on a CPU; 'fp32' and 'bf16' are themselves."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


@contextlib.contextmanager
def _ieee_fp32() -> Iterator[None]:
    """Convolutions and matrix products in full fp32 on CUDA. PyTorch lets cuDNN use TF32 (a 10-bit mantissa) for
    fp32 convolutions by default, which moves a ResNet's loss in the 4th digit: fp32 must mean fp32 here."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast when asked for ('bf16'); full fp32 otherwise (no TF32 on CUDA)."""
    if precision == "fp32":
        return _ieee_fp32() if device.type == "cuda" else contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    raise ValueError(f"unknown precision {precision!r}: use fp32 or bf16")


def batched_sums(model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, batch_size: int,
                 criterion: Criterion = cross_entropy_sums, precision: str = "fp32", sample_dim: int = 0
                 ) -> tuple[Tensor, Tensor]:
    """(loss_sum, correct) over (x, y) as float64 tensors on x's device, with no host sync.

    The batches' outputs are gathered and the criterion runs once over all of them: for small models each
    kernel launch costs about as much as a batch's forward pass, so per-batch losses would cost a third of
    the time (measured on the MNIST-1D MLP). `sample_dim` is where the samples lie in the model's output:
    1 for a model vmapped over several weight sets, whose criterion then returns one sum per set.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    with torch.inference_mode(), autocast_context(x.device, precision):
        outs = [model(x[start:start + batch_size]) for start in range(0, x.shape[0], batch_size)]
        return criterion(outs[0] if len(outs) == 1 else torch.cat(outs, dim=sample_dim), y)


def sums_tensor(model: nn.Module, x: Tensor, y: Tensor, batch_size: int, criterion: Criterion = cross_entropy_sums,
                precision: str = "fp32") -> Tensor:
    """[loss_sum, correct, count] as one float64 tensor, ready to be all-reduced across ranks."""
    loss_sum, correct = batched_sums(model, x, y, batch_size, criterion, precision)
    return torch.stack([loss_sum, correct, torch.tensor(float(len(x)), dtype=torch.float64, device=x.device)])


def evaluate(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 256,
             criterion: Criterion = cross_entropy_sums, precision: str = "fp32") -> Sums:
    """Loss and accuracy of `model` (which the caller has put in eval mode) on (x, y)."""
    loss_sum, correct, count = sums_tensor(model, x, y, batch_size, criterion, precision).tolist()
    return Sums(loss_sum, correct, int(count))
