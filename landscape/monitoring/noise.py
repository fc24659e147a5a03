"""The gradient noise scale B_simple = tr(Sigma) / |G|^2 of McCandlish et al. (2018), measured during training.

With per-sample gradient covariance Sigma, E|G_B|^2 = |G|^2 + tr(Sigma)/B for a batch of B samples. Gradients of
K micro-batches of b samples give |G_b|^2 (their mean squared norm) and |G_Kb|^2 (the squared norm of their
mean) at once; the two equations then give unbiased estimates of |G|^2 and tr(Sigma) (their Appendix A.1).
Ratios of noisy estimates are biased, so a run's B_simple is the ratio of the averaged numerator and
denominator, as in the paper; where the |G|^2 estimate is not positive the ratio is undefined (null), not infinite.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from landscape.runtime.distributed import all_reduce_sum
from landscape.runtime.sources import batch_size_of

UNDEFINED = "|G|^2 estimate not positive"  # why a B_simple is null


@dataclass(frozen=True)
class NoiseEstimate:
    g2: float  # |G|^2, the squared norm of the true gradient
    trace_sigma: float  # tr(Sigma), the per-sample gradient variance summed over parameters

    @property
    def b_simple(self) -> float | None:
        """tr(Sigma) / |G|^2, or None where the estimate of |G|^2 is not positive (a small batch, a noisy step):
        the ratio is undefined there, not infinite (b_simple_note says why)."""
        return self.trace_sigma / self.g2 if self.g2 > 0 else None

    @property
    def b_simple_note(self) -> str | None:
        return None if self.g2 > 0 else UNDEFINED


def two_batch_estimate(g2_small: float, g2_big: float, small: int, big: int) -> NoiseEstimate:
    """|G|^2 and tr(Sigma) from |G_small|^2 (the mean over batches of `small` samples) and |G_big|^2 (of `big`)."""
    g2 = (big * g2_big - small * g2_small) / (big - small)
    trace_sigma = (g2_small - g2_big) / (1 / small - 1 / big)
    return NoiseEstimate(g2, trace_sigma)


def b_simple_of(g2: float, trace_sigma: float) -> dict[str, float | str | None]:
    """A record's B_simple: the ratio, or null with the reason beside it (strict JSON has no Infinity)."""
    est = NoiseEstimate(g2, trace_sigma)
    return {"b_simple": est.b_simple, **({"b_simple_undefined": UNDEFINED} if est.b_simple is None else {})}


def noise_of_batches(model: nn.Module, batches: Iterable[Any], loss: Callable[[nn.Module, Any], Tensor],
                     reduce: bool = False) -> tuple[NoiseEstimate, int, int]:
    """The two-batch estimate from the gradients of `loss(model, batch)` (a batch's mean loss) over equal-sized
    micro-batches: (estimate, small, big). With `reduce`, every rank's micro-batches count (their squared norms
    and their gradients all-reduced). The model's .grad fields are left as they were."""
    params = [p for p in model.parameters() if p.requires_grad]
    total, sum_sq, n, size = None, 0.0, 0, None
    for batch in batches:
        g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss(model, batch), params)]).double()
        total = g if total is None else total + g
        sum_sq, n = sum_sq + float(g.pow(2).sum()), n + 1
        size = size or batch_size_of(batch)
    if n < 2:
        raise ValueError(f"the noise scale needs at least 2 micro-batches, got {n}")
    counts = torch.tensor([sum_sq, float(n)], dtype=torch.float64, device=total.device)
    if reduce:
        all_reduce_sum(counts)
        all_reduce_sum(total)
    sum_sq, n = float(counts[0]), int(counts[1])
    g2_big = float((total / n).pow(2).sum())
    return two_batch_estimate(sum_sq / n, g2_big, size, size * n), size, size * n


def cross_entropy_loss(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    """The mean cross-entropy of a classifier's (b, C) or a language model's (b, T, V) outputs."""
    x, y = batch
    out = model(x)
    return nn.functional.cross_entropy(out.float().flatten(0, -2), y.to(out.device).flatten().long())


def estimate_noise(model: nn.Module, x: Tensor, y: Tensor, micro_batch: int, generator: torch.Generator,
                   n_micro: int = 8) -> NoiseEstimate:
    """One two-batch-size estimate at the model's current weights, from n_micro random micro-batches of the
    (x, y) tensors drawn with `generator`, under the cross-entropy. The model's .grad fields are left as they were."""
    idx = drawn_samples(len(x), micro_batch, generator, n_micro).to(x.device)
    device = next(model.parameters()).device
    batches = ((x[chunk].to(device), y[chunk]) for chunk in idx.view(n_micro, micro_batch))
    return noise_of_batches(model, batches, cross_entropy_loss)[0]


def drawn_samples(n: int, micro_batch: int, generator: torch.Generator, n_micro: int) -> Tensor:
    """The n_micro x micro_batch sample indices (of n; a language model's are sequences) an estimate draws with
    `generator`, on the data's device; refused when there are too few."""
    if n_micro < 2:
        raise ValueError("n_micro must be >= 2")
    if micro_batch * n_micro > n:
        raise ValueError(f"{n_micro} micro-batches of {micro_batch} need {micro_batch * n_micro} samples, "
                         f"but there are {n}; use fewer or smaller micro-batches")
    return torch.randperm(n, generator=generator)[: micro_batch * n_micro]


@dataclass(frozen=True)
class HessianNoise:
    """McCandlish et al.'s B_noise = tr(H Sigma) / (G^T H G) (their eq. 2.6; B_simple replaces H by the identity),
    its two parts, B_simple from the same gradients, and the Hessian-vector products it took."""

    trace_h_sigma: float
    ghg: float
    simple: NoiseEstimate
    products: int

    @property
    def b_noise(self) -> float | None:
        """tr(H Sigma) / G^T H G, or None where the estimate of G^T H G is not positive (undefined, not infinite)."""
        return self.trace_h_sigma / self.ghg if self.ghg > 0 else None


def estimate_b_noise(model: nn.Module, x: Tensor, y: Tensor, micro_batch: int, generator: torch.Generator,
                     *, n_micro: int = 8, batch_size: int = 512, metric: str = "cross_entropy") -> HessianNoise:
    """B_noise at the model's current weights from n_micro random micro-batches of b = micro_batch samples of
    (x, y) under the cross-entropy, the model in eval mode (as the Hessian is taken, landscape.curvature):
    with g_i the micro-batches' gradients, g their mean and H the Hessian of the loss on all n_micro x b samples,
    tr(H Sigma) = b / (n_micro - 1) sum_i (g_i - g)^T H (g_i - g) and G^T H G = g^T H g - tr(H Sigma) / (n_micro b),
    each unbiased given H (the second removes the noise g carries). Cost: n_micro gradients and n_micro + 1
    Hessian-vector products over the n_micro x b samples (each about two gradients of them). The model's .grad
    fields and its train/eval mode are left as they were. `metric`: the Hessian's loss, the data's metric name
    (a language model's "next_token"), the same mean cross-entropy the gradients take."""
    from landscape.curvature.hessian import HessianOperator

    device = next(model.parameters()).device
    idx = drawn_samples(len(x), micro_batch, generator, n_micro).to(x.device)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    was = model.training
    model.eval()
    try:
        grads = torch.stack([torch.cat([t.reshape(-1) for t in torch.autograd.grad(
            cross_entropy_loss(model, (x[chunk].to(device), y[chunk])), params)]).double()
            for chunk in idx.view(n_micro, micro_batch)])
    finally:
        model.train(was)
    op = HessianOperator(model, (x[idx], y[idx]), metric, params=names, reduce=False, batch_size=batch_size)
    mean = grads.mean(0)
    spread = grads - mean
    quad = sum(float(d @ op.matvec(d)) for d in spread)
    trace_h_sigma = micro_batch / (n_micro - 1) * quad
    ghg = float(mean @ op.matvec(mean)) - trace_h_sigma / (n_micro * micro_batch)
    simple = two_batch_estimate(float(grads.pow(2).sum(1).mean()), float(mean.pow(2).sum()), micro_batch,
                                micro_batch * n_micro)
    return HessianNoise(trace_h_sigma, ghg, simple, op.products)
