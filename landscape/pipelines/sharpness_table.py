"""A model's sharpness as one table: every measure of curvature.hessian, curvature.density and curvature.sharpness
on the same data, for the chosen parameters and, with per_layer, for each layer's own; each row a value, its
standard error, whether it is only a lower bound, and the settings that made it. Written as CSV and JSON beside
the checkpoint's surfaces; the JSON also keys a rerun, which reuses it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.stats import sem
from torch import nn

from landscape.base.config import SharpnessConfig, SurfaceConfig, run_tag
from landscape.base.errors import UserError
from landscape.base.files import read_cached, write_cached, write_csv
from landscape.base.grid import parse_range
from landscape.core.directions import (
    DirectionSpec,
    complete,
    covered_tensors,
    create_random_directions,
    output_axes,
)
from landscape.core.grid_eval import EvalSet, PointEvaluator, compute_surface
from landscape.core.params import Params, model_tensors, norm, snapshot
from landscape.core.surface_file import SurfaceSink, empty_surface
from landscape.curvature.costs import estimate_text, graph_budget_text, measure_costs, time_units
from landscape.curvature.density import Density, spectral_density
from landscape.curvature.hessian import HessianOperator, eigenvalues, graph_budget, hutchpp_trace
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
from landscape.pipelines.inputs import load_centre, load_sets, moved_tensors, resolve_batch_size
from landscape.runtime.distributed import DistInfo, broadcast_object, print0
from landscape.runtime.metrics import Metric
from landscape.runtime.sources import StreamSource, TensorSource, rank_share

HESSIAN_MEASURES = ("lambda_max", "lambda_min", "trace", "density")
COLUMNS = ["subset", "measure", "value", "stderr", "bound", "settings"]


@dataclass(frozen=True)
class SharpnessRun:
    rows: list[dict[str, Any]]  # subset, measure, value, stderr, bound, settings
    density: dict[str, dict[str, list]]  # subset -> SLQ nodes and weights (runs x steps)
    csv: str | None
    json: str | None
    reused: bool


@dataclass
class Subject:
    """What every measure works on: the model, its weights, the data (all of it, and this rank's share), the
    metric and which of its sums is the loss, and how random directions are made."""

    model: nn.Module
    theta0: Params
    source: TensorSource | StreamSource
    metric: Metric
    info: DistInfo
    spec: DirectionSpec
    axis: str
    loss_name: str | None = None
    axes: dict[str, int] = field(default_factory=dict)  # output axes of weights stored (in, out)
    held: tuple[list[str], HessianOperator] | None = field(default=None, repr=False)  # see hessian()

    @property
    def batch_size(self) -> int:
        return getattr(self.source, "batch_size", 512)

    def mean_loss(self, names: list[str], reduce: bool = True, data: Any = None) -> MeanLoss:
        return MeanLoss(self.model, rank_share(self.source, self.info) if data is None else data, self.metric,
                        params=names, reduce=reduce, batch_size=self.batch_size, loss_name=self.loss_name)

    def hessian(self, names: list[str]) -> HessianOperator:
        """The Hessian over `names`; the last one made is kept and given again for the same names (its graphs
        are built once), and dropped when another is asked for."""
        if self.held is not None and self.held[0] == names:
            return self.held[1]
        self.held = None  # its graphs go before the next one's are built
        cap = None if self.info.device.type == "cuda" else min(graph_budget(self.info.device), CPU_GRAPH_BYTES)
        op = HessianOperator(self.model, rank_share(self.source, self.info), self.metric, params=names,
                             batch_size=self.batch_size, cache_bytes=cap, loss_name=self.loss_name)
        self.held = (names, op)
        return op

    def release(self) -> None:
        """Drop the Hessian held for reuse (its graphs take memory)."""
        self.held = None


# On a CPU the kept Hessian graphs may hold at most this much (or a quarter of the free memory, if less): past it
# they are rebuilt at every product, which cost a ResNet-18 with 128 samples 0.5-0.7 s a product against 0.3-0.4 s
CPU_GRAPH_BYTES = 2 << 30


def subsets(model: nn.Module, moved: set[str] | None, per_layer: bool, params: Any
            ) -> list[tuple[str, list[str]]]:
    """(label, parameter names): the chosen parameters (moved_tensors refuses an empty choice), then with
    per_layer each module's own among them."""
    chosen = [n for n, _ in model.named_parameters() if moved is None or n in moved]
    label = params if isinstance(params, str) else "chosen" if callable(params) else " ".join(params) or "all"
    out = [(label, chosen)]
    if per_layer:
        layers: dict[str, list[str]] = {}
        for n in chosen:
            layers.setdefault(n.rsplit(".", 1)[0] if "." in n else n, []).append(n)
        out += list(layers.items())
    return out


def _row(subset: str, measure: str, m: Measured) -> dict[str, Any]:
    return {"subset": subset, "measure": measure, "value": m.value, "stderr": m.stderr,
            "bound": "lower" if m.lower_bound else "", "settings": m.settings}


class Progress:
    """One line per measure as it ends, with its time (rank 0)."""

    def __init__(self, log: Callable[[str], None], total: int):
        self.log, self.total, self.done = log, total, 0

    @contextlib.contextmanager
    def step(self, label: str, measure: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.done += 1
        self.log(f"[{self.done}/{self.total}] {label}: {measure} in {time.perf_counter() - started:.1f} s")


def hessian_rows(s: Subject, label: str, names: list[str], sc: SharpnessConfig, progress: Progress
                 ) -> tuple[list[dict[str, Any]], dict[str, list] | None, Params | None]:
    """The Hessian's rows, its density, and its top unit eigenvector when the widths need it."""
    op = s.hessian(names)
    rows, density, top = [], None, None
    seed = s.spec.seed
    if {"lambda_max", "lambda_min", "width"} & set(sc.measures):
        measure = "lambda_max" if "lambda_max" in sc.measures else "lambda_min" if "lambda_min" in sc.measures \
            else "top eigenvector"
        with progress.step(label, measure):
            e = eigenvalues(op, tol=sc.tol, seed=seed, smallest="lambda_min" in sc.measures,
                            vectors="width" in sc.measures)
        settings = {"tol": sc.tol, "products": e.matvecs, "parameters": op.dim}
        if "lambda_max" in sc.measures:
            rows.append(_row(label, "lambda_max", Measured(e.top[0], settings=settings)))
        if "lambda_min" in sc.measures:
            rows.append(_row(label, "lambda_min", Measured(e.min, settings={**settings, "converged": e.min_converged})))
        top = broadcast_object(e.vectors[0]) if e.vectors else None
    if "trace" in sc.measures:
        with progress.step(label, "trace"):
            t = hutchpp_trace(op, sc.trace_products, seed)
        rows.append(_row(label, "trace", Measured(t.estimate, t.stderr, {"method": "Hutch++", "products": t.products})))
    if "density" in sc.measures:
        with progress.step(label, "density"):
            d = spectral_density(op, sc.density_runs, sc.density_steps, seed)
        first = d.moment(1)
        rows.append(_row(label, "density_mean", Measured(
            float(first.mean()), float(sem(first)) if len(first) > 1 else float("nan"),
            {"runs": sc.density_runs, "steps": sc.density_steps, "what": "SLQ first moment, tr(H)/n"})))
        density = {"nodes": d.nodes.tolist(), "weights": d.weights.tolist()}
    return rows, density, top


def loss_rows(s: Subject, label: str, names: list[str], sc: SharpnessConfig, progress: Progress
              ) -> list[dict[str, Any]]:
    f = s.mean_loss(names)
    rows, seed = [], s.spec.seed
    if "epsilon" in sc.measures:
        with progress.step(label, "epsilon"):
            for eps in sc.eps:
                m = epsilon_sharpness(f, eps, sc.subspace, sc.lbfgs_iters, seed)
                rows.append(_row(label, f"epsilon_sharpness_{eps:g}", m))
    if "adaptive" in sc.measures:
        chunks, reduced = [f], False
        if sc.m_sharpness:
            chunks, reduced = m_chunks(s, names, sc.m_sharpness), True
        with progress.step(label, "adaptive"):
            m = adaptive_sharpness(chunks, sc.rho, sc.adaptive_norm, sc.ascent_steps, seed, chunks_reduced=reduced)
        m = dataclasses.replace(m, settings={**m.settings, "m": sc.m_sharpness or "all"})
        rows.append(_row(label, "adaptive_sharpness", m))
    if "average" in sc.measures:
        with progress.step(label, "average"):
            rows.append(_row(label, "average_sharpness", average_sharpness(f, sc.sigma, sc.draws, seed)))
    return rows


def m_chunks(s: Subject, names: list[str], m: int) -> list[MeanLoss]:
    """This rank's chunks of m samples (chunk i on rank i % world_size), each its own loss."""
    if not isinstance(s.source, TensorSource):
        raise UserError("--m-sharpness splits data held in memory; with --data, leave it out (the whole data is one "
                        "chunk) or pass (inputs, targets) tensors")
    x, y = s.source.x, s.source.y
    starts = list(range(0, len(x), m))[s.info.rank::s.info.world_size]
    return [s.mean_loss(names, reduce=False, data=(x[i:i + m], y[i:i + m])) for i in starts]


WIDTH_ROUNDS = 3  # at most this many re-evaluations of a curve: each doubles its axis or narrows it
WIDTH_LIMIT = 8.0  # an axis grows at most to this many times its first half-span


def width_rows(s: Subject, label: str, names: list[str], sc: SharpnessConfig, top: Params | None
               ) -> list[dict[str, Any]]:
    """1D curves along N filter-normalized random directions and the top Hessian eigenvector (scaled to the same
    norm), moving only `names`; the width of each basin at `threshold`, their mean, standard error and range. A
    curve whose basin reaches the axis's edge is evaluated again on an axis twice as wide (up to WIDTH_LIMIT
    times the first), one whose width is under two grid steps on a narrower axis; a width still at the edge is a
    lower bound, and so is a mean over such widths."""
    if not covered_tensors(s.theta0, set(names), s.spec.ignore) or top is None:
        return []  # only 1-D tensors (biases, BatchNorm), which the directions leave at zero
    random = create_random_directions(s.theta0, sc.width_directions, s.spec, set(names), s.axes)
    scale = norm(random[0])  # not zero: covered_tensors found a tensor the random directions move
    dirs = random + [complete({k: t * scale for k, t in top.items()}, s.theta0)]
    evaluator = PointEvaluator(s.model, s.theta0, dirs, [EvalSet("", s.source, s.metric)], loss_name=s.loss_name)
    first = parse_range(s.axis, "--x")
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
    settings = {"threshold": sc.threshold, "axis": s.axis, "norm": s.spec.norm, "seed": s.spec.seed,
                "capped": sum(capped[:-1]), "spans": [float(a[-1]) for a in axes]}
    widths = [b.width for b in basins]
    return [_row(label, "width", spread(widths[:-1], {**settings, "directions": sc.width_directions},
                                        lower_bound=any(capped[:-1]))),
            _row(label, "width_hessian", Measured(widths[-1], settings={
                "threshold": sc.threshold, "direction": "top eigenvector", "span": float(axes[-1][-1])},
                lower_bound=capped[-1]))]


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


def paths_for(cfg: SurfaceConfig) -> tuple[str, str]:
    stem = os.path.join(cfg.out, f"{cfg.name or run_tag(cfg.checkpoint)}_sharpness")
    return stem + ".csv", stem + ".json"


def run_sharpness(cfg: SurfaceConfig, sc: SharpnessConfig, info: DistInfo, write: bool = True,
                  log: Callable[[str], None] = print0) -> SharpnessRun:
    """Every measure of `sc` on cfg's model and first split, for the chosen parameters (and per layer); written
    to OUT/<name>_sharpness.{csv,json} unless write=False. A JSON made by the same request is reused. Before
    measuring, `log` gets each measure's estimated time (curvature.costs) and the Hessian graphs' memory budget;
    while measuring, a line per measure as it ends."""
    csv_path, json_path = paths_for(cfg)
    centre = load_centre(cfg, cfg.checkpoint)  # first: a wrong path is a one-line error
    key = {"checkpoint_sha256": centre.sha256, "surface": _request(cfg), "sharpness": asdict(sc)}
    cached = read_cached(json_path, key) if write else None
    if cached is not None:  # strict JSON stored NaN as null: numbers again for the caller
        rows = [{**r, **{k: float("nan") if r[k] is None else r[k] for k in ("value", "stderr")}}
                for r in cached["rows"]]
        return SharpnessRun(rows, cached["density"], csv_path, json_path, True)
    model = centre.model.to(info.device).eval()
    sets, _, _ = load_sets(dataclasses.replace(cfg, splits=cfg.splits[:1]), centre.ckpt, info.device,
                           resolve_batch_size(cfg.eval_batch_size, info.device))
    spec = DirectionSpec("weights", cfg.norm, cfg.ignore, cfg.seed)
    rows, density = measure_table(model, sets[0].source, sets[0].metric, sc, info, spec, cfg.x, cfg.loss_name,
                                  cfg.params, cfg.trainable_only, log)
    if write and info.is_main:
        write_csv(csv_path, [{**r, "settings": _settings_text(r["settings"])} for r in rows], COLUMNS, ".6g")
        write_cached(json_path, key, {"rows": rows, "density": density})
    return SharpnessRun(rows, density, csv_path if write else None, json_path if write else None, False)


def measure_table(model: nn.Module, source: TensorSource | StreamSource, metric: Metric, sc: SharpnessConfig,
                  info: DistInfo, spec: DirectionSpec, axis: str, loss_name: str | None = None,
                  params: Any = (), trainable_only: bool = False, log: Callable[[str], None] = print0
                  ) -> tuple[list[dict[str, Any]], dict[str, dict[str, list]]]:
    """Every measure of `sc` on `model` over `source` (the command's and landscape.sharpness_table's one path):
    the rows, and the SLQ densities by subset. `params`: name globs or a predicate choosing the parameters;
    `axis`: the widths' first alpha axis."""
    theta0 = snapshot(model_tensors(model), device="cpu")
    s = Subject(model, theta0, source, metric, info, spec, axis, loss_name, output_axes(model))
    chosen = subsets(model, moved_tensors(model, theta0, params or None, trainable_only), sc.per_layer, params)
    costs = announce_costs(s, chosen[0][1], sc, len(chosen), log)
    progress = Progress(log, len(costs) * len(chosen))
    rows, density = [], {}
    for label, names in chosen:
        top = None
        if any(m in HESSIAN_MEASURES for m in sc.measures) or "width" in sc.measures:
            more, dens, top = hessian_rows(s, label, names, sc, progress)
            rows += more
            if dens is not None:
                density[label] = dens
        s.release()
        rows += loss_rows(s, label, names, sc, progress)
        if "width" in sc.measures:
            with progress.step(label, "width"):
                rows += width_rows(s, label, names, sc, top)
    return rows, density


def announce_costs(s: Subject, names: list[str], sc: SharpnessConfig, n_subsets: int, log: Callable[[str], None]
                   ) -> dict[str, tuple[float, str]]:
    """Time one forward pass, gradient and Hessian-vector product at the centre, then log each measure's estimate
    and the memory the Hessian graphs may keep; returns the estimates."""
    needs_hessian = bool({*HESSIAN_MEASURES, "width"} & set(sc.measures))
    units = time_units(s.mean_loss(names), s.hessian(names) if needs_hessian else None)
    units = broadcast_object(units)
    costs = measure_costs(sc, units, s.axis)
    log(estimate_text(costs, n_subsets))
    if needs_hessian:
        log(graph_budget_text(units.graph_budget))
    return costs


def _request(cfg: SurfaceConfig) -> dict[str, Any]:
    """What of a SurfaceConfig decides the numbers (not where they go)."""
    return {k: v for k, v in asdict(cfg).items() if k not in ("out", "name", "progress", "device", "flush_seconds")}


def _settings_text(settings: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in settings.items() if k not in ("values", "spans"))


def table_text(rows: list[dict[str, Any]]) -> str:
    """Rows as a terminal table: one line per subset and measure, value +- standard error."""
    lines = [f"{'subset':<24} {'measure':<26} {'value':>14}   {'stderr':>10}   settings"]
    for r in rows:
        se = "" if not np.isfinite(r["stderr"]) else f"{r['stderr']:.3g}"
        value = (">= " if r.get("bound") == "lower" else "") + f"{r['value']:.5g}"
        lines.append(f"{r['subset'][:24]:<24} {r['measure']:<26} {value:>14} +- {se:>10}   "
                     f"{_settings_text(r['settings'])}")
    return "\n".join(lines)


def density_curve(density: dict[str, list], points: int = 400, width: float | None = None
                  ) -> tuple[np.ndarray, np.ndarray, float]:
    """The smoothed density on a grid over the spectrum; the Gaussian width defaults to 1% of its span."""
    d = Density(np.asarray(density["nodes"]), np.asarray(density["weights"]))
    lo, hi = float(d.nodes.min()), float(d.nodes.max())
    sigma = width or max(0.01 * (hi - lo), 1e-12)
    grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, points)
    return grid, d.smoothed(grid, sigma), sigma

