"""The sharpness measures read off the loss itself, registered: Keskar's epsilon-sharpness, adaptive worst-case
and average-case sharpness, and the basin width along random directions and the top Hessian eigenvector."""

from __future__ import annotations

import dataclasses

import numpy as np

from landscape.base.errors import UserError
from landscape.base.grid import parse_range
from landscape.core.directions import complete, covered_tensors, create_random_directions
from landscape.core.grid_eval import EvalSet, PointEvaluator, compute_surface
from landscape.core.params import norm
from landscape.core.surface_file import SurfaceSink, empty_surface
from landscape.curvature.costs import LBFGS_PER_PARAMETER, WIDTH_REEVALUATED, UnitCosts
from landscape.curvature.sharpness import (
    Basin,
    MeanLoss,
    Measured,
    adaptive_sharpness,
    average_sharpness,
    basin_1d,
    epsilon_sharpness,
    next_axis,
    spread,
)
from landscape.pipelines.measure_registry import Measure, Row, SharpnessConfig, Subject, register_measure, row
from landscape.runtime.distributed import DistInfo, broadcast_object
from landscape.runtime.sources import TensorSource


def epsilon_rows(s: Subject, label: str, names: list[str], sc: SharpnessConfig) -> list[Row]:
    f = s.mean_loss(names)
    return [row(label, f"epsilon_sharpness_{eps:g}", epsilon_sharpness(f, eps, sc.subspace, sc.lbfgs_iters,
                                                                       s.spec.seed)) for eps in sc.eps]


def _epsilon_cost(sc: SharpnessConfig, u: UnitCosts) -> tuple[float, str]:
    n = len(sc.eps) * (sc.lbfgs_iters + 2)
    steps = n * u.parameters * LBFGS_PER_PARAMETER
    return n * u.gradient + steps, f"~{n} gradients of {u.gradient:.2g} s and ~{steps:.0f} s of L-BFGS-B steps"


def adaptive_rows(s: Subject, label: str, names: list[str], sc: SharpnessConfig) -> list[Row]:
    chunks, reduced = [s.mean_loss(names)], False
    if sc.m_sharpness:
        chunks, reduced = m_chunks(s, names, sc.m_sharpness), True
    m = adaptive_sharpness(chunks, sc.rho, sc.adaptive_norm, sc.ascent_steps, s.spec.seed, chunks_reduced=reduced)
    return [row(label, "adaptive_sharpness", dataclasses.replace(m, settings={**m.settings,
                                                                             "m": sc.m_sharpness or "all"}))]


def m_chunks(s: Subject, names: list[str], m: int) -> list[MeanLoss]:
    """This rank's chunks of m samples (chunk i on rank i % world_size), each its own loss."""
    if not isinstance(s.source, TensorSource):
        raise UserError("--m-sharpness splits data held in memory; with --data, leave it out (the whole data is one "
                        "chunk) or pass (inputs, targets) tensors")
    x, y = s.source.x, s.source.y
    starts = list(range(0, len(x), m))[s.info.rank::s.info.world_size]
    return [s.mean_loss(names, reduce=False, data=(x[i:i + m], y[i:i + m])) for i in starts]


def average_rows(s: Subject, label: str, names: list[str], sc: SharpnessConfig) -> list[Row]:
    return [row(label, "average_sharpness", average_sharpness(s.mean_loss(names), sc.sigma, sc.draws, s.spec.seed))]


WIDTH_ROUNDS = 3  # at most this many re-evaluations of a curve: each doubles its axis or narrows it
WIDTH_LIMIT = 8.0  # an axis grows at most to this many times its first half-span


def width_rows(s: Subject, label: str, names: list[str], sc: SharpnessConfig) -> list[Row]:
    """1D curves along N filter-normalized random directions and the top Hessian eigenvector (scaled to the same
    norm), moving only `names`; the width of each basin at `threshold`, their mean, standard error and range. A
    curve whose basin reaches the axis's edge is evaluated again on an axis twice as wide (up to WIDTH_LIMIT
    times the first), one whose width is under two grid steps on a narrower axis; a width still at the edge is a
    lower bound, and so is a mean over such widths."""
    if not covered_tensors(s.theta0, set(names), s.spec.ignore):
        return []  # only 1-D tensors (biases, BatchNorm), which the directions leave at zero
    _, top = s.eigen(names, sc.tol)
    s.release()  # the eigenvector is all the widths take of the Hessian
    random = create_random_directions(s.theta0, sc.width_directions, s.spec, set(names), s.axes)
    scale = norm(random[0])  # not zero: covered_tensors found a tensor the random directions move
    dirs = random + [complete({k: t * scale for k, t in top.items()}, s.theta0)]
    evaluator = PointEvaluator(s.model, s.theta0, dirs, [EvalSet("", s.source, s.metric)], loss_name=s.loss_name)
    first = parse_range(sc.x, "--x")
    axes = [first] * len(dirs)
    basins: list[Basin | None] = [None] * len(dirs)
    todo = list(range(len(dirs)))
    for _ in range(WIDTH_ROUNDS + 1):
        curves = curves_along(evaluator, {j: axes[j] for j in todo}, len(dirs), s.info)
        for j in todo:
            basins[j] = basin_1d(axes[j], curves[j], sc.threshold)
        again = {j: next_axis(axes[j], basins[j], WIDTH_LIMIT * float(first[-1])) for j in todo}
        todo = [j for j, a in again.items() if a is not None]
        for j in todo:
            axes[j] = again[j]
        if not todo:
            break
    capped = [b.capped for b in basins]
    settings = {"threshold": sc.threshold, "axis": sc.x, "norm": s.spec.norm, "seed": s.spec.seed,
                "capped": sum(capped[:-1]), "spans": [float(a[-1]) for a in axes]}
    widths = [b.width for b in basins]
    return [row(label, "width", spread(widths[:-1], {**settings, "directions": sc.width_directions},
                                       lower_bound=any(capped[:-1]))),
            row(label, "width_hessian", Measured(widths[-1], settings={
                "threshold": sc.threshold, "direction": "top eigenvector", "span": float(axes[-1][-1])},
                lower_bound=capped[-1]))]


def _width_cost(sc: SharpnessConfig, u: UnitCosts) -> tuple[float, str]:
    points = len(parse_range(sc.x))
    n = round((sc.width_directions + 1) * points * WIDTH_REEVALUATED)
    return n * u.forward, (f"~{n} forward passes ({sc.width_directions + 1} directions x {points} points, and "
                           "re-evaluated curves)")


def curves_along(evaluator: PointEvaluator, axes: dict[int, np.ndarray], n_dirs: int, info: DistInfo
                 ) -> dict[int, np.ndarray]:
    """The loss along direction j at the points axes[j], for each j given; on every rank."""
    blocks = []
    for j, alphas in axes.items():
        block = np.zeros((len(alphas), n_dirs))
        block[:, j] = alphas
        blocks.append(block)
    points = np.vstack(blocks)
    names = evaluator.metric_names
    sink = SurfaceSink(empty_surface(np.arange(len(points)), None, names), names) if info.is_main else None
    compute_surface(evaluator, points, sink, info, progress=False)
    loss = broadcast_object(sink.values[evaluator.loss_names[0]] if sink is not None else None)
    out, start = {}, 0
    for j, alphas in axes.items():
        out[j] = loss[start:start + len(alphas)]
        start += len(alphas)
    return out


register_measure(Measure("epsilon", epsilon_rows, _epsilon_cost,
                 lambda sc: tuple(f"epsilon_sharpness_{eps:g}" for eps in sc.eps)))
register_measure(Measure("adaptive", adaptive_rows,
                 lambda sc, u: ((sc.ascent_steps + 1) * u.gradient,
                                   f"{sc.ascent_steps + 1} gradients of {u.gradient:.2g} s"),
                 lambda sc: ("adaptive_sharpness",)))
register_measure(Measure("average", average_rows,
                 lambda sc, u: ((sc.draws + 1) * u.forward, f"{sc.draws + 1} forward passes of {u.forward:.2g} s"),
                 lambda sc: ("average_sharpness",)))
register_measure(Measure("width", width_rows, _width_cost, lambda sc: ("width", "width_hessian"),
                 lanczos=frozenset({"top", "vectors"})))
