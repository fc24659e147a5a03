"""Sharpness-Aware Minimization (Foret et al. 2021) and its adaptive form ASAM (Kwon et al. 2021) around any base
optimizer, with m-sharpness: each group of M samples gets its own ascent, the groups strided over the step's
samples so that they are the same on any number of processes (sam_groups).

For each group: the gradient g at the weights w (the ascent pass, on the unwrapped module, so nothing is
communicated: what `no_sync` gives under DDP), the step e = rho g / |g| (ASAM: rho w^2 g / |w g|), then the gradient
at w + e (the descent pass, through the DDP module), accumulated over the groups; only the last descent backward
of the optimizer step all-reduces, so a SAM step costs one all-reduce like a plain one. BatchNorm's running
statistics are those of the ascent pass alone (at w): the descent pass's updates are undone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from landscape.base.errors import ConfigError
from landscape.optim.step import token_cross_entropy
from landscape.runtime.distributed import DistInfo
from landscape.runtime.forward import autocast_context, batchnorm_statistics_kept


def sam_groups(pieces: list[tuple[Tensor, Tensor]], m: int | None) -> list[list[tuple[Tensor, Tensor]]]:
    """The step's micro-batches in ascent groups of `m` samples (m divides the micro-batch), or all of them together
    (m None: the rank's whole batch). With G = the rank's samples / m groups, group g holds the rank's samples g,
    g + G, g + 2G, ...: strided as DistributedSampler deals a step's samples to the ranks, so that over all ranks a
    group is the same samples on any number of processes (rank r of W holds the step's samples r, r + W, ..., and
    its local group c is the step's group c W + r)."""
    if m is None:
        return [pieces]
    for x, _ in pieces:
        if len(x) % m:
            raise ConfigError(f"--sam-m {m} does not divide the micro-batch of {len(x)} samples; choose a divisor "
                              "of it, or leave --sam-m out for the rank's whole batch")
    x, y = (torch.cat([p[i] for p in pieces]) if len(pieces) > 1 else pieces[0][i] for i in (0, 1))
    count = len(x) // m
    return [[(x[g::count], y[g::count])] for g in range(count)]


def ascent_step(params: list[nn.Parameter], grads: list[Tensor], rho: float, adaptive: bool) -> list[Tensor]:
    """e = rho g / |g| (SAM), or rho w^2 g / |w g| with the weights' magnitudes (ASAM), over all parameters."""
    scaled = [g * p.detach().abs() if adaptive else g for p, g in zip(params, grads)]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(s.float()) for s in scaled]))
    scale = rho / (norm + 1e-12)
    return [(s * p.detach().abs() if adaptive else s) * scale for p, s in zip(params, scaled)]


def sam_step(ddp_model: nn.Module, model: nn.Module, opt: torch.optim.Optimizer, sched: object,
             micro_batches: Iterable[tuple[Tensor, Tensor]], *, precision: str, info: DistInfo, losses: list[Tensor],
             rho: float, adaptive: bool = False, m: int | None = None,
             loss_fn: Callable[[Tensor, Tensor], Tensor] = token_cross_entropy) -> None:
    """One SAM optimizer step of this rank over its micro-batches (x, y); appends each micro-batch's mean loss at
    the weights (the ascent pass's) to `losses`, as train_step does. `model` is the unwrapped module of
    `ddp_model`."""
    params = [p for p in model.parameters() if p.requires_grad]
    micro = list(micro_batches)
    groups = sam_groups(micro, m)
    n_pieces = sum(len(g) for g in groups)
    per_micro = len(micro[0][0]) // m if m is not None else None  # chunk groups a micro-batch holds
    done, pending = 0, []
    for group in groups:
        at_w, grads = [], [torch.zeros_like(p) for p in params]
        for x, y in group:  # the ascent pass: the gradient at w, with nothing communicated
            with autocast_context(info.device, precision):
                out = model(x)
            loss = loss_fn(out, y)
            for acc, g in zip(grads, torch.autograd.grad(loss, params)):
                acc.add_(g, alpha=1 / len(group))
            at_w.append(loss.detach())
        if per_micro is None:
            losses.extend(at_w)
        else:  # one loss per micro-batch's worth of groups (their mean), so the step logs as many as a plain one
            pending += at_w
            if len(pending) == per_micro:
                losses.append(torch.stack(pending).mean())
                pending = []
        e = ascent_step(params, grads, rho, adaptive)
        kept = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, step in zip(params, e):
                p.add_(step)
        with batchnorm_statistics_kept(model):  # the descent pass at w + e: the gradient the optimizer takes
            for x, y in group:
                done += 1
                sync = ddp_model.no_sync() if info.is_distributed and done < n_pieces else contextlib.nullcontext()
                with sync:
                    with autocast_context(info.device, precision):
                        out = ddp_model(x)
                    (loss_fn(out, y) / n_pieces).backward()
        with torch.no_grad():
            for p, w in zip(params, kept):
                p.copy_(w)
    opt.step()
    opt.zero_grad(set_to_none=True)
    sched.step()
