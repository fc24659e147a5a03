"""The gradient noise scale B_simple = tr(Sigma) / |G|^2 of McCandlish et al. (2018), measured during training.

With per-sample gradient covariance Sigma, E|G_B|^2 = |G|^2 + tr(Sigma)/B for a batch of B samples. Gradients of
K micro-batches of b samples give |G_b|^2 (their mean squared norm) and |G_Kb|^2 (the squared norm of their
mean) at once; the two equations then give unbiased estimates of |G|^2 and tr(Sigma) (their Appendix A.1).
Ratios of noisy estimates are biased, so a run's B_simple is the ratio of the averaged numerator and
denominator, as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


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


UNDEFINED = "|G|^2 estimate not positive"  # why a B_simple is null


def b_simple_of(g2: float, trace_sigma: float) -> dict[str, float | str | None]:
    """A record's B_simple: the ratio, or null with the reason beside it (strict JSON has no Infinity)."""
    est = NoiseEstimate(g2, trace_sigma)
    return {"b_simple": est.b_simple, **({"b_simple_undefined": UNDEFINED} if est.b_simple is None else {})}


def estimate_noise(model: nn.Module, x: Tensor, y: Tensor, micro_batch: int, generator: torch.Generator,
                   n_micro: int = 8) -> NoiseEstimate:
    """One two-batch-size estimate at the model's current weights, from n_micro random micro-batches.
    The model's .grad fields are left as they were."""
    if n_micro < 2:
        raise ValueError("n_micro must be >= 2")
    if micro_batch * n_micro > len(x):
        raise ValueError(f"{n_micro} micro-batches of {micro_batch} need {micro_batch * n_micro} samples, "
                         f"but there are {len(x)}; use fewer or smaller micro-batches")
    params = [p for p in model.parameters() if p.requires_grad]
    idx = torch.randperm(len(x), generator=generator)[: micro_batch * n_micro].to(x.device)  # samples: sequences
    grads = []
    for chunk in idx.view(n_micro, micro_batch):
        out = model(x[chunk].to(params[0].device))  # a classifier's (b, C), or a language model's (b, T, V)
        loss = nn.functional.cross_entropy(out.float().flatten(0, -2), y[chunk].to(out.device).flatten().long())
        grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]).double())
    g = torch.stack(grads)
    small, big = micro_batch, micro_batch * n_micro
    g2_small = float(g.pow(2).sum(1).mean())
    g2_big = float(g.mean(0).pow(2).sum())
    g2 = (big * g2_big - small * g2_small) / (big - small)
    trace_sigma = (g2_small - g2_big) / (1 / small - 1 / big)
    return NoiseEstimate(g2, trace_sigma)
