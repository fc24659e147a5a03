"""A metric's exact sums over one pass of a data source, and the loss and accuracy of a model over tensors.

Shared by the trainer (stored checkpoint metrics) and the surface engine (every grid point), so the centre
of a surface reproduces the checkpoint's numbers. The model is evaluated in eval mode: BatchNorm uses its
running statistics, as in Li et al.; no batch statistics leak into the landscape. `recalibrate_batchnorm`
re-estimates those statistics for moved weights first, when asked to.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from landscape.runtime.metrics import Metric, check_sums, cross_entropy, inputs_of
from landscape.runtime.sources import StreamSource, TensorSource


@dataclass(frozen=True)
class LossAccuracy:
    """What `evaluate` returns: a model's summed loss and accuracy over tensors, and the count they are over."""

    loss_sum: float
    acc_sum: float  # 100 per correct sample, as landscape.runtime.metrics.cross_entropy sums it
    count: int

    @property
    def loss(self) -> float:
        return self.loss_sum / self.count

    @property
    def acc(self) -> float:
        """Accuracy in percent (the reference implementation's unit)."""
        return self.acc_sum / self.count


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' is bf16 autocast on CUDA and fp32 on a CPU; 'fp32' and 'bf16' are themselves."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX, as oneDNN sees it). Without it, bf16 autocast
    is emulated: ResNet-56 ran 8x slower than fp32 on this project's AVX2 CPU (benchmarks/surface.py)."""
    probe = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_bf16_supported", None)
    return bool(probe()) if probe is not None else False


@contextlib.contextmanager
def _ieee_fp32() -> Iterator[None]:
    """Convolutions and matrix products in full fp32 on CUDA. PyTorch lets cuDNN use TF32 (a 10-bit mantissa) for
    fp32 convolutions by default; fp32 means fp32 here, so that the GPU's values match the CPU's (to 1e-5,
    tests/test_gpu.py)."""
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


def forward_batch(forward: Callable[..., Any], batch: Any) -> Any:
    """The model's outputs for one batch (landscape.runtime.metrics.inputs_of says which items are inputs)."""
    args, kwargs = inputs_of(batch)
    return forward(*args, **kwargs)


def _stack(sums: dict[str, Tensor], keys: list[str] | None, metric: Metric) -> tuple[Tensor, list[str]]:
    """A metric's sums as one float64 vector [sum_1, ..., sum_n, count] (shape (K, n+1) when vmapped over K)."""
    if keys is None:
        check_sums(metric, sums)
        keys = [k for k in sums if k != "count"]
    return torch.stack([sums[k].to(torch.float64) for k in [*keys, "count"]], dim=-1), keys


_CONCAT_LIMIT = 1 << 26  # output elements of a whole resident pass that may be concatenated for one metric call


def source_sums(forward: Callable[..., Any], source: TensorSource | StreamSource, metric: Metric,
                precision: str = "fp32", keys: list[str] | None = None, vmapped: bool = False
                ) -> tuple[Tensor, list[str]]:
    """Sums of `metric` over one pass of `source`, as [sum_1, ..., sum_n, count] float64 on the device with no
    host sync, and the sums' names.

    For resident tensors the outputs of all batches are concatenated and the metric runs once: for small models
    each kernel launch costs about as much as a batch's forward pass, so per-batch metrics would cost a third of
    the time (measured on the MNIST-1D MLP). `vmapped`: forward and metric are vmapped over K weight sets, whose
    outputs carry the samples in dimension 1 and whose sums are (K,).
    """
    with torch.inference_mode(), autocast_context(source.device, precision):
        if not source.streamed:
            batches = source.batches
            out0 = forward(batches[0][0])
            if isinstance(out0, Tensor) and out0.numel() * len(batches) <= _CONCAT_LIMIT:
                outs = [out0, *[forward(xb) for xb, _ in batches[1:]]]
                out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1 if vmapped else 0)
                return _stack(metric(out, (source.x, source.y)), keys, metric)
            # large outputs (a language model's logits): the metric per batch, nothing gathered
            pairs: Iterable[tuple[Any, Any]] = itertools.chain(
                [(out0, batches[0])], ((forward(xb), (xb, yb)) for xb, yb in batches[1:]))
        else:
            pairs = ((forward_batch(forward, batch), batch) for batch in source)
        total = None
        for out, batch in pairs:
            vec, keys = _stack(metric(out, batch), keys, metric)
            total = vec if total is None else total.add_(vec)
        assert total is not None and keys is not None  # sources refuse to be empty
        return total, keys


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._NormBase]:
    """The normalization layers that keep running statistics (BatchNorm1d/2d/3d, SyncBatchNorm)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats]


@contextlib.contextmanager
def modes_kept(model: nn.Module) -> Iterator[None]:
    """Every module's train/eval mode as it was before the block, whatever the block sets."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


@contextlib.contextmanager
def batchnorm_statistics_kept(model: nn.Module) -> Iterator[None]:
    """The model's BatchNorm running statistics (and their counters) as they were before the block: what the
    block's forward passes write there is undone on the way out."""
    kept = [(b, b.detach().clone()) for m in batchnorm_layers(model) for b in m.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in kept:
                buffer.copy_(value)


def recalibrate_batchnorm(model: nn.Module, batches: Iterable[Any], precision: str = "fp32") -> None:
    """Reset the running statistics of every BatchNorm layer and re-estimate them from `batches`: forward passes
    in train mode without gradients, with momentum None, so each statistic is the plain average over the batches
    (the same numbers whatever ran before). The model is left in eval mode.

    Moving the weights (a grid point, an interpolation) makes the stored statistics stale, and a network evaluated
    with them can look far worse than it is (Garipov et al. 2018, Izmailov et al. 2018 re-estimate them so)."""
    layers = batchnorm_layers(model)
    saved = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    try:
        model.train()
        with torch.no_grad(), autocast_context(next(model.parameters()).device, precision):
            for batch in batches:
                forward_batch(model, batch)
    finally:
        for m, momentum in zip(layers, saved):
            m.momentum = momentum
        model.eval()


def means_of(metric: Metric, sums: Tensor, keys: list[str]) -> Tensor:
    """Reported values from [sum_1, ..., sum_n, count] (or (K, n+1)): sums / count, then the metric's `finish`."""
    means = sums[..., :-1] / sums[..., -1:]
    fin = getattr(metric, "finish", None)
    if fin is None:  # the usual case: one kernel per set and point
        return means
    values = fin({k: means[..., i] for i, k in enumerate(keys)})
    return torch.stack(list(values.values()), dim=-1)


def sums_tensor(model: nn.Module, x: Tensor, y: Tensor, batch_size: int, precision: str = "fp32",
                metric: Metric = cross_entropy) -> Tensor:
    """[loss_sum, acc_sum, count] of `metric` (cross-entropy, or a language model's token loss) over (x, y) as one
    float64 tensor, ready to be all-reduced; acc_sum / count is the accuracy in percent."""
    return source_sums(model, TensorSource(x, y, x.device, batch_size), metric, precision)[0]


def loss_accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 256, precision: str = "fp32",
             metric: Metric = cross_entropy) -> LossAccuracy:
    """Loss and accuracy of `model` (which the caller has put in eval mode) on (x, y), samples or tokens."""
    loss_sum, acc_sum, count = sums_tensor(model, x, y, batch_size, precision, metric).tolist()
    return LossAccuracy(loss_sum, acc_sum, int(count))
