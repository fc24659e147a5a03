"""The sharpness measures, registered: each a small record (`Measure`) that owns its computation, its cost
estimate and the rows it writes, and `SharpnessConfig`, whose `measures` are names in this registry. The table
(pipelines.sharpness_table) is a loop over the chosen measures in the order they were registered. A new measure
is one module that calls `register_measure` (the built-in ones: pipelines.hessian_measures and pipelines.loss_measures),
imported before the table is built.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from torch import nn

from landscape.base.config import CURVATURES, DEFAULT_MEASURES, WIDTH_AXIS
from landscape.base.errors import ConfigError, UnknownNameError
from landscape.base.flags import option
from landscape.base.grid import parse_range
from landscape.base.registry import Registry
from landscape.core.directions import DirectionSpec
from landscape.core.params import Params
from landscape.curvature.costs import LANCZOS_PRODUCTS, UnitCosts
from landscape.curvature.ggn import OutputCurvature
from landscape.curvature.hessian import Eigen, HessianOperator, eigenvalues, graph_budget
from landscape.curvature.operators import curvature_operator
from landscape.curvature.sharpness import MeanLoss, Measured
from landscape.runtime.distributed import DistInfo, broadcast_object
from landscape.runtime.metrics import Metric
from landscape.runtime.sources import StreamSource, TensorSource, rank_share

Row = dict[str, Any]  # subset, measure, value, stderr, bound, settings


@dataclass(frozen=True)
class Measure:
    """One sharpness measure. `rows(subject, label, names, sc)` measures it over the parameters `names` (the
    subset `label`); `cost(sc, units)` is its (seconds, how counted) from the unit costs timed at the
    centre; `columns(sc)` the measure names of the rows it writes. `hessian`: it works on the Hessian operator
    (its kept graphs stay while it runs); `lanczos`: what it reads of the one Lanczos run that every measure of
    the table shares ("top", "smallest", "vectors"), whose products the first such measure pays for."""

    name: str
    rows: Callable[[Subject, str, list[str], SharpnessConfig], list[Row]]
    cost: Callable[[SharpnessConfig, UnitCosts], tuple[float, str]]
    columns: Callable[[SharpnessConfig], tuple[str, ...]]
    hessian: bool = False
    lanczos: frozenset[str] = frozenset()


MEASURES = Registry("sharpness measure")  # the table's vocabulary: --measures NAME
register_measure = MEASURES.add


def chosen_measures(names: tuple[str, ...]) -> list[Measure]:
    """The registered measures among `names`, in registration order (the table's row order)."""
    for name in names:
        if name not in MEASURES:
            raise UnknownNameError(f"--measures {name!r} is not one of: {', '.join(MEASURES)}")
    return [m for name, m in MEASURES.items() if name in names]


def measure_costs(sc: SharpnessConfig, u: UnitCosts) -> dict[str, tuple[float, str]]:
    """measure -> (estimated seconds, how it was counted), for one subset of parameters; the shared Lanczos run
    is counted once, with the first measure that reads it."""
    out: dict[str, tuple[float, str]] = {}
    lanczos_paid = False
    for m in chosen_measures(sc.measures):
        seconds, how = m.cost(sc, u)
        if m.lanczos and not lanczos_paid:
            lanczos = f"~{LANCZOS_PRODUCTS} Hessian-vector products of {u.product:.2g} s (Lanczos)"
            seconds, how, lanczos_paid = seconds + LANCZOS_PRODUCTS * u.product, "; ".join(
                filter(None, [lanczos, how])), True
        out[m.name] = (seconds, how)
    per_estimate = LANCZOS_PRODUCTS * ("lambda_max" in sc.measures) + sc.trace_products * ("trace" in sc.measures)
    if sc.data_subsets and per_estimate:  # K estimates on 1/K of the data each: one estimate's worth of products
        out["data subsets"] = (per_estimate * u.product,
                               f"{sc.data_subsets} x {per_estimate} products, each on 1/{sc.data_subsets} of the data")
    if sc.samples_check and per_estimate:  # on n/8 + n/4 + n/2 + n samples
        out["samples check"] = (1.875 * per_estimate * u.product, f"4 x {per_estimate} products on n/8 ... n samples")
    return out


def row(subset: str, measure: str, m: Measured) -> Row:
    return {"subset": subset, "measure": measure, "value": m.value, "stderr": m.stderr,
            "bound": "lower" if m.lower_bound else "", "settings": m.settings}


@dataclass
class Subject:
    """What every measure works on: the model, its weights, the data (all of it, and this rank's share), the
    metric and which of its sums is the loss, how random directions are made, and what the measures of one
    subset share (the Hessian, the Lanczos run) or hand on (the SLQ densities by subset)."""

    model: nn.Module
    theta0: Params
    source: TensorSource | StreamSource
    metric: Metric
    _: KW_ONLY  # the fields below are keyword-only
    info: DistInfo
    spec: DirectionSpec
    loss_name: str | None = None
    axes: dict[str, int] = field(default_factory=dict)  # output axes of weights stored (in, out)
    lanczos_needs: frozenset[str] = frozenset()  # what the chosen measures read of the Lanczos run
    curvature: str = "hessian"  # which curvature operator the Hessian measures read (landscape.curvature.ggn)
    memory: int | None = None  # bytes the curvature may keep beside one batch's graph (None: graph_budget)
    densities: dict[str, dict[str, list]] = field(default_factory=dict)  # subset -> SLQ nodes and weights
    held: tuple[list[str], HessianOperator | OutputCurvature] | None = field(default=None, repr=False)  # see hessian()
    eigen_of: tuple[list[str], Eigen, Params | None] | None = field(default=None, repr=False)  # see eigen()

    @property
    def batch_size(self) -> int:
        return getattr(self.source, "batch_size", 512)

    def mean_loss(self, names: list[str], reduce: bool = True, data: Any = None) -> MeanLoss:
        return MeanLoss(self.model, rank_share(self.source, self.info) if data is None else data, self.metric,
                        params=names, reduce=reduce, batch_size=self.batch_size, loss_name=self.loss_name)

    def hessian(self, names: list[str]) -> HessianOperator | OutputCurvature:
        """The curvature operator over `names` (the Hessian, or the chosen `curvature`); the last one made is kept
        and given again for the same names (its graphs are built once), and dropped when another is asked for."""
        if self.held is not None and self.held[0] == names:
            return self.held[1]
        self.held = None  # its graphs go before the next one's are built
        op = curvature_operator(self.curvature, self.model, rank_share(self.source, self.info), self.metric,
                                params=names, batch_size=self.batch_size, cache_bytes=self.budget,
                                loss_name=self.loss_name, seed=self.spec.seed)
        self.held = (names, op)
        return op

    @property
    def budget(self) -> int:
        """Bytes the curvature may keep beside one batch's graph: kept graphs, Hutch++'s vectors."""
        return graph_budget(self.info.device) if self.memory is None else self.memory

    def eigen(self, names: list[str], tol: float) -> tuple[Eigen, Params | None]:
        """The one Lanczos run over `names` that the chosen measures share (the most negative eigenvalue too, and
        the top eigenvector, when one of them reads it), and that vector on every rank."""
        if self.eigen_of is None or self.eigen_of[0] != names:
            e = eigenvalues(self.hessian(names), tol=tol, seed=self.spec.seed,
                            smallest="smallest" in self.lanczos_needs, vectors="vectors" in self.lanczos_needs)
            self.eigen_of = (names, e, broadcast_object(e.vectors[0]) if e.vectors else None)
        return self.eigen_of[1], self.eigen_of[2]

    def needs_hessian(self, m: Measure, names: list[str]) -> bool:
        """Whether measure `m` still needs the held Hessian: it works on it, or reads a Lanczos run not made yet."""
        return m.hessian or bool(m.lanczos and (self.eigen_of is None or self.eigen_of[0] != names))

    def release(self) -> None:
        """Drop the Hessian held for reuse (its graphs take memory)."""
        self.held = None


def _names_hint() -> tuple[str, ...]:
    return tuple(MEASURES)


ADAPTIVE_NORMS = ("2", "inf")


@dataclass(frozen=True, kw_only=True)
class SharpnessConfig:
    """Which sharpness measures `landscape.sharpness` takes and how (curvature.sharpness, curvature.hessian,
    landscape.curvature.density); the model, data, subset and directions come from a SurfaceConfig's flags."""

    measures: tuple[str, ...] = option(DEFAULT_MEASURES,
                                       "what to measure: Hessian extremes (Lanczos), trace (Hutch++), spectral "
                                       "density (SLQ), Keskar's epsilon-sharpness, adaptive worst-case and "
                                       "average-case sharpness, basin width over random directions; each prints "
                                       "its estimated time first", choices=_names_hint, group="measures")
    per_layer: bool = option(False, "also one row per layer (each module's own parameters)", group="measures")
    curvature: str = option("hessian", "the curvature the Hessian measures (lambda_max, lambda_min, trace, density, "
                            "the widths' eigenvector) read: the Hessian, the generalized Gauss-Newton J^T H_out J, "
                            "the Monte-Carlo Fisher or the empirical Fisher (landscape.curvature.ggn)",
                            choices=CURVATURES, group="hessian")
    tol: float = option(1e-3, "Lanczos tolerance: the eigenvalues' relative error bound", group="hessian")
    trace_products: int = option(60, "Hessian-vector products of the trace: Hutch++, or Hutchinson where Hutch++'s "
                                 "vectors would not fit --curvature-memory", metavar="N", group="hessian")
    curvature_memory: int | None = option(None, "MiB the curvature may keep beside one batch's graph: the gradient "
                                          "graphs of every batch (else rebuilt at each product) and Hutch++'s "
                                          "vectors (default: 256 on CPU, half the free GPU memory)", metavar="MIB",
                                          group="hessian")
    data_subsets: int | None = option(None, "also lambda_max and the trace on each of K disjoint subsets of the "
                                      "data: their mean, standard error, min and max (rows *_over_subsets)",
                                      metavar="K", group="how sure")
    samples_check: bool = option(False, "also lambda_max and the trace on the first n/8, n/4, n/2 and n samples, "
                                 "to see whether the estimate has settled (rows *_vs_samples)", group="how sure")
    density_runs: int = option(5, "SLQ runs averaged for the spectral density", metavar="N", group="hessian")
    density_steps: int = option(60, "Lanczos steps per SLQ run", metavar="N", group="hessian")
    eps: tuple[float, ...] = option((1e-3, 5e-4), "Keskar's box half-width(s), relative to |w|+1 (one row each)",
                                    group="epsilon-sharpness")
    subspace: int | None = option(None, "maximize in a random P-dimensional subspace (default: the full space)",
                                  metavar="P", group="epsilon-sharpness")
    lbfgs_iters: int = option(10, "L-BFGS-B iterations", metavar="N", group="epsilon-sharpness")
    rho: float = option(0.05, "adaptive sharpness radius: ||delta / |w|||_p <= RHO", group="adaptive sharpness")
    adaptive_norm: str = option("2", "the norm p of the adaptive ball", choices=ADAPTIVE_NORMS,
                                group="adaptive sharpness")
    ascent_steps: int = option(10, "projected gradient-ascent steps", metavar="N", group="adaptive sharpness")
    m_sharpness: int | None = option(None, "m-sharpness: the mean over chunks of M samples, each with its own "
                                     "worst case (default: the whole data as one chunk)", metavar="M",
                                     group="adaptive sharpness")
    sigma: float = option(0.01, "average-case sharpness: Gaussian perturbation with std SIGMA * |w| per weight",
                          group="average sharpness")
    draws: int = option(20, "perturbations drawn for the average and its standard error", metavar="N",
                        group="average sharpness")
    width_directions: int = option(10, "filter-normalized random directions whose basin widths are averaged (plus "
                                   "the top Hessian eigenvector, scaled alike)", metavar="N", group="width")
    threshold: float = option(0.1, "the width is where the loss stays within this much of the curve's minimum",
                              group="width")
    # the widths' axis is --x, the alpha axis of every command: one flag, one field name
    x: str = option(WIDTH_AXIS, "the widths' first alpha axis MIN:MAX:NUM along each direction, widened (up to 8x) "
                    "where a basin reaches its edge and narrowed where it is under two steps", metavar="MIN:MAX:NUM",
                    group="width")

    def __post_init__(self) -> None:
        chosen_measures(self.measures)
        parse_range(self.x, "--x")
        if self.adaptive_norm not in ADAPTIVE_NORMS:
            raise ConfigError(f"--adaptive-norm {self.adaptive_norm!r} is not one of: {', '.join(ADAPTIVE_NORMS)}")
        for value, flag, low in [(self.trace_products, "--trace-products", 6), (self.density_runs, "--density-runs", 1),
                                 (self.density_steps, "--density-steps", 2), (self.lbfgs_iters, "--lbfgs-iters", 1),
                                 (self.ascent_steps, "--ascent-steps", 1), (self.draws, "--draws", 2),
                                 (self.width_directions, "--width-directions", 2), (self.subspace, "--subspace", 1),
                                 (self.m_sharpness, "--m-sharpness", 1),
                                 (self.curvature_memory, "--curvature-memory", 0),
                                 (self.data_subsets, "--data-subsets", 2)]:
            if value is not None and value < low:
                raise ConfigError(f"{flag} must be >= {low}, got {value}")
        for value, flag in [(self.tol, "--tol"), (self.rho, "--rho"), (self.sigma, "--sigma"),
                            (self.threshold, "--threshold"), *((e, "--eps") for e in self.eps)]:
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"{flag} must be a positive number, got {value}")
