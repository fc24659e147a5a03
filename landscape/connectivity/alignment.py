"""Weight matching (Ainsworth et al. 2023, "Git Re-Basin"): the permutation of B's hidden units that brings its
weights closest to A's, found one permutation at a time as a linear assignment (scipy's linear_sum_assignment),
iterated until no permutation changes; and B permuted by it, which computes the same function as B.

    spec = spec_for(model)                         # landscape.connectivity.permutations
    aligned = align(spec, state_a, state_b, names) # a state dict: B's units in A's order
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from landscape.base.errors import UserError
from landscape.connectivity.permutations import Axis, PermutationSpec, spec_for
from landscape.core.params import Params
from landscape.runtime.forward import forward_batch
from landscape.runtime.metrics import logits_of
from landscape.runtime.sources import map_tensors

MAX_SWEEPS = 100  # rounds over all permutations; matching usually settles in under 10


@dataclass(frozen=True)
class Alignment:
    """What weight matching found: each permutation (perms[p][i] is the unit of B that takes A's place i), the
    aligned state dict, and how far it moved B."""

    perms: dict[str, Tensor]
    state: Params  # B's state dict, permuted
    sweeps: int
    distance_before: float  # |theta_B - theta_A| over the matched parameters
    distance_after: float

    @property
    def units(self) -> int:
        return sum(len(p) for p in self.perms.values())

    @property
    def moved(self) -> int:
        """Hidden units not left where they were: 0 when B already lines up with A."""
        return sum(int((p != torch.arange(len(p))).sum()) for p in self.perms.values())

    def summary(self) -> str:
        share = 100 * self.moved / max(1, self.units)
        return (f"alignment: {self.moved} of {self.units} hidden units moved ({share:.1f}%, {len(self.perms)} "
                f"permutations, {self.sweeps} sweeps); |B - A| {self.distance_before:.4g} -> {self.distance_after:.4g}")


def permute_tensor(t: Tensor, axes: tuple[Axis | None, ...], perms: dict[str, Tensor], skip: int | None = None
                   ) -> Tensor:
    """`t` with every axis the spec names reordered by its permutation (except axis `skip`)."""
    for i, a in enumerate(axes):
        if a is None or i == skip:
            continue
        n = len(perms[a.perm])
        shape = t.shape
        grouped = t.reshape(*shape[:i], a.outer, n, a.inner, *shape[i + 1:])
        t = grouped.index_select(i + 1, perms[a.perm].to(t.device)).reshape(shape)
    return t


def permuted(spec: PermutationSpec, state: Params, perms: dict[str, Tensor]) -> Params:
    """A state dict with every tensor of the spec permuted; the others as they were (shared, not copied)."""
    return {k: permute_tensor(v, spec.axes[k], perms) if k in spec.axes else v for k, v in state.items()}


def _units_first(t: Tensor, a: Axis, axis: int, n: int) -> Tensor:
    """(n, -1): the permuted axis's n units as rows, everything else flattened."""
    shape = t.shape
    grouped = t.reshape(*shape[:axis], a.outer, n, a.inner, *shape[axis + 1:])
    return grouped.movedim(axis + 1, 0).reshape(n, -1)


def weight_matching(spec: PermutationSpec, a: Params, b: Params, names: set[str] | None = None, seed: int = 0
                    ) -> tuple[dict[str, Tensor], int]:
    """The permutations of B's units that maximize sum_l <W_A^l, P W_B^l Q^T> over the tensors `names` (default:
    all the spec's; pass the parameters, leaving running statistics out), one permutation at a time in a seeded
    random order, until a sweep changes none. Returns the permutations and the sweeps taken."""
    a = {k: v.detach().double().cpu() for k, v in a.items() if k in spec.axes and (names is None or k in names)}
    b = {k: v.detach().double().cpu() for k, v in b.items() if k in a}
    perms = {p: torch.arange(n) for p, n in spec.sizes.items()}
    uses = {p: [(k, i) for k, i in spec.uses(p) if k in a] for p in perms}
    order = np.random.default_rng(seed)
    for sweep in range(1, MAX_SWEEPS + 1):
        changed = False
        for p in order.permutation(sorted(perms)):
            n = spec.sizes[p]
            gain = torch.zeros(n, n, dtype=torch.float64)
            for k, i in uses[p]:
                axis = spec.axes[k][i]
                wa = _units_first(a[k], axis, i, n)
                wb = _units_first(permute_tensor(b[k], spec.axes[k], perms, skip=i), axis, i, n)
                gain += wa @ wb.T
            rows, cols = linear_sum_assignment(gain.numpy(), maximize=True)
            new = torch.as_tensor(cols, dtype=torch.long)
            before = float(gain[torch.arange(n), perms[p]].sum())
            after = float(gain[torch.as_tensor(rows), new].sum())
            if after > before + 1e-12 * max(1.0, abs(before)):
                changed = True
                perms[p] = new
        if not changed:
            return perms, sweep
    return perms, MAX_SWEEPS


def align(spec: PermutationSpec, a: Params, b: Params, names: set[str] | None = None, seed: int = 0) -> Alignment:
    """B's state dict with its hidden units permuted toward A's by weight matching over `names` (the parameters)."""
    perms, sweeps = weight_matching(spec, a, b, names, seed)
    state = permuted(spec, b, perms)
    keys = [k for k in a if (names is None or k in names) and a[k].is_floating_point()]

    def distance(s: Params) -> float:
        return float(sum(((s[k].double() - a[k].double()) ** 2).sum() for k in keys)) ** 0.5

    return Alignment(perms, state, sweeps, distance(b), distance(state))


def random_permutations(spec: PermutationSpec, seed: int = 0) -> dict[str, Tensor]:
    """A random permutation of every permutation's units (what a test scrambles a model with)."""
    g = torch.Generator().manual_seed(seed)
    return {p: torch.randperm(n, generator=g) for p, n in spec.sizes.items()}


def align_models(model_a: nn.Module, model_b: nn.Module, spec: str | Mapping[str, Any] | None = None, seed: int = 0,
                 batch: Any = None) -> tuple[nn.Module, Alignment]:
    """A copy of `model_b` with its hidden units permuted toward `model_a`'s (weight matching over the parameters;
    BatchNorm statistics follow their units), and what was found. With `batch`, B and its aligned copy are run
    on it (eval mode) and refused unless their outputs agree to float tolerance: a wrong user spec is caught."""
    permutation_spec = spec_for(model_a, spec)
    names = {k for k, _ in model_a.named_parameters()}
    found = align(permutation_spec, model_a.state_dict(), model_b.state_dict(), names, seed)
    aligned = copy.deepcopy(model_b)
    aligned.load_state_dict(found.state)
    if batch is not None:
        check_function(model_b, aligned, batch)
    return aligned.eval(), found


def check_function(model_b: nn.Module, aligned: nn.Module, batch: Any) -> None:
    """Refuse an alignment that changed what the network computes (a permutation spec that misses a tensor)."""
    was = model_b.training
    model_b.eval()
    aligned.eval()
    device = next(model_b.parameters()).device  # the batch may sit on the evaluation's device (CUDA)
    batch = map_tensors(batch, lambda t: t.to(device))
    with torch.no_grad():
        before = logits_of(forward_batch(model_b, batch)).float()
        after = logits_of(forward_batch(aligned, batch)).float()
    model_b.train(was)
    scale = float(before.abs().max())
    moved = float((before - after).abs().max())
    if not moved <= 1e-4 * (1.0 + scale):
        raise UserError(f"the permutation spec does not keep the network's function: its outputs move by "
                        f"{moved:.3g} (largest output {scale:.3g}) once B is permuted; a tensor the hidden units "
                        "flow through is missing from the spec, or an axis is wrong")
