"""A model's sharpness as one table: every measure of landscape.hessian, landscape.density and landscape.measures
on the same data, for the chosen parameters and, with per_layer, for each layer's own; each row a value, its
standard error and the settings that made it. Written as CSV and JSON beside the checkpoint's surfaces; the JSON
also keys a rerun, which reuses it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import sem
from torch import nn

from landscape.checkpoint import file_sha256
from landscape.config import SharpnessConfig, SurfaceConfig, run_tag
from landscape.density import Density, spectral_density
from landscape.directions import DirectionSpec, covered_tensors, create_random_directions
from landscape.distributed import DistInfo, broadcast_object, print0, run_on_main
from landscape.engine import EvalSet, PointEvaluator, compute_surface
from landscape.errors import UserError
from landscape.files import read_cached, write_cached, write_csv
from landscape.grid import parse_range
from landscape.hessian import HessianOperator, eigenvalues, hutchpp_trace
from landscape.measures import (
    MeanLoss,
    Measured,
    adaptive_sharpness,
    average_sharpness,
    epsilon_sharpness,
    spread,
    width_1d,
)
from landscape.metrics import Metric
from landscape.params import Params, model_tensors, snapshot
from landscape.runner import (
    MemorySink,
    hessian_directions,
    load_centre,
    load_sets,
    moved_tensors,
    rank_share,
    resolve_batch_size,
)
from landscape.sources import StreamSource, TensorSource

HESSIAN_MEASURES = ("lambda_max", "lambda_min", "trace", "density")
COLUMNS = ["subset", "measure", "value", "stderr", "settings"]


@dataclass(frozen=True)
class SharpnessRun:
    rows: list[dict[str, Any]]  # subset, measure, value, stderr, settings
    density: dict[str, dict[str, list]]  # subset -> SLQ nodes and weights (runs x steps)
    csv: str | None
    json: str | None
    reused: bool


@dataclass
class Subject:
    """What every measure works on: the model, its weights, the data (all of it, and this rank's share)."""

    model: nn.Module
    theta0: Params
    source: TensorSource | StreamSource
    metric: Metric
    info: DistInfo
    spec: DirectionSpec
    axis: str

    @property
    def batch_size(self) -> int:
        return getattr(self.source, "batch_size", 512)


def subsets(model: nn.Module, moved: set[str] | None, per_layer: bool, params: tuple[str, ...]
            ) -> list[tuple[str, list[str]]]:
    """(label, parameter names): the chosen parameters (moved_tensors refuses an empty choice), then with
    per_layer each module's own among them."""
    chosen = [n for n, _ in model.named_parameters() if moved is None or n in moved]
    out = [(" ".join(params) if params else "all", chosen)]
    if per_layer:
        layers: dict[str, list[str]] = {}
        for n in chosen:
            layers.setdefault(n.rsplit(".", 1)[0] if "." in n else n, []).append(n)
        out += list(layers.items())
    return out


def _row(subset: str, measure: str, m: Measured) -> dict[str, Any]:
    return {"subset": subset, "measure": measure, "value": m.value, "stderr": m.stderr, "settings": m.settings}


def hessian_rows(s: Subject, label: str, names: list[str], sc: SharpnessConfig
                 ) -> tuple[list[dict[str, Any]], dict[str, list] | None]:
    op = HessianOperator(s.model, rank_share(s.source, s.info), s.metric, params=names, batch_size=s.batch_size)
    rows, density = [], None
    seed = s.spec.seed
    if "lambda_max" in sc.measures or "lambda_min" in sc.measures:
        e = eigenvalues(op, tol=sc.tol, seed=seed, smallest="lambda_min" in sc.measures)
        settings = {"tol": sc.tol, "products": e.matvecs, "parameters": op.dim}
        rows.append(_row(label, "lambda_max", Measured(e.top[0], settings=settings)))
        if "lambda_min" in sc.measures:
            rows.append(_row(label, "lambda_min", Measured(e.min, settings={**settings, "converged": e.min_converged})))
    if "trace" in sc.measures:
        t = hutchpp_trace(op, sc.trace_products, seed)
        rows.append(_row(label, "trace", Measured(t.estimate, t.stderr, {"method": "Hutch++", "products": t.products})))
    if "density" in sc.measures:
        d = spectral_density(op, sc.density_runs, sc.density_steps, seed)
        first = d.moment(1)
        rows.append(_row(label, "density_mean", Measured(
            float(first.mean()), float(sem(first)) if len(first) > 1 else float("nan"),
            {"runs": sc.density_runs, "steps": sc.density_steps, "what": "SLQ first moment, tr(H)/n"})))
        density = {"nodes": d.nodes.tolist(), "weights": d.weights.tolist()}
    return rows, density


def loss_rows(s: Subject, label: str, names: list[str], sc: SharpnessConfig) -> list[dict[str, Any]]:
    f = MeanLoss(s.model, rank_share(s.source, s.info), s.metric, params=names, batch_size=s.batch_size)
    rows, seed = [], s.spec.seed
    if "epsilon" in sc.measures:
        for eps in sc.eps:
            m = epsilon_sharpness(f, eps, sc.subspace, sc.lbfgs_iters, seed)
            rows.append(_row(label, f"epsilon_sharpness_{eps:g}", m))
    if "adaptive" in sc.measures:
        chunks, reduced = [f], False
        if sc.m_sharpness:
            chunks, reduced = m_chunks(s, names, sc.m_sharpness), True
        m = adaptive_sharpness(chunks, sc.rho, sc.adaptive_norm, sc.ascent_steps, seed, chunks_reduced=reduced)
        m = dataclasses.replace(m, settings={**m.settings, "m": sc.m_sharpness or "all"})
        rows.append(_row(label, "adaptive_sharpness", m))
    if "average" in sc.measures:
        rows.append(_row(label, "average_sharpness", average_sharpness(f, sc.sigma, sc.draws, seed)))
    return rows


def m_chunks(s: Subject, names: list[str], m: int) -> list[MeanLoss]:
    """This rank's chunks of m samples (chunk i on rank i % world_size), each its own loss."""
    if not isinstance(s.source, TensorSource):
        raise UserError("--m-sharpness splits data held in memory; with --data, leave it out (the whole data is one "
                        "chunk) or pass (inputs, targets) tensors")
    x, y = s.source.x, s.source.y
    starts = list(range(0, len(x), m))[s.info.rank::s.info.world_size]
    return [MeanLoss(s.model, (x[i:i + m], y[i:i + m]), s.metric, params=names, reduce=False,
                     batch_size=s.batch_size) for i in starts]


def width_rows(s: Subject, label: str, names: list[str], sc: SharpnessConfig) -> list[dict[str, Any]]:
    """1D curves along N filter-normalized random directions and the top Hessian eigenvector (scaled to the same
    norm), moving only `names`; the width of each basin at `threshold`, their mean, standard error and range."""
    if not covered_tensors(s.theta0, set(names), s.spec.ignore):
        return []  # only 1-D tensors (biases, BatchNorm), which the directions leave at zero
    random = create_random_directions(s.theta0, sc.width_directions, s.spec, set(names))
    top, _ = hessian_directions(s.model, s.theta0, s.source, 1, s.spec, set(names), s.metric, s.info)
    dirs = random + top
    alphas = parse_range(s.axis, "--x")
    points = np.zeros((len(dirs) * len(alphas), len(dirs)))
    for j in range(len(dirs)):
        points[j * len(alphas):(j + 1) * len(alphas), j] = alphas
    evaluator = PointEvaluator(s.model, s.theta0, dirs, [EvalSet("", s.source, s.metric)])
    sink = MemorySink(len(points), len(evaluator.metric_names)) if s.info.is_main else None
    compute_surface(evaluator, points, sink, s.info, progress=False)

    def widths() -> list[float]:
        loss = sink.rows[:, evaluator.metric_names.index("loss")].reshape(len(dirs), len(alphas))
        return [width_1d(alphas, curve, sc.threshold) for curve in loss]

    found = broadcast_object(run_on_main(widths, s.info))
    settings = {"threshold": sc.threshold, "axis": s.axis, "norm": s.spec.norm, "seed": s.spec.seed}
    return [_row(label, "width", spread(found[:-1], {**settings, "directions": sc.width_directions})),
            _row(label, "width_hessian", Measured(found[-1], settings={**settings, "direction": "top eigenvector"}))]


def paths_for(cfg: SurfaceConfig) -> tuple[str, str]:
    stem = os.path.join(cfg.out, f"{cfg.name or run_tag(cfg.checkpoint)}_sharpness")
    return stem + ".csv", stem + ".json"


def run_sharpness(cfg: SurfaceConfig, sc: SharpnessConfig, info: DistInfo, write: bool = True,
                  log: Callable[[str], None] = print0) -> SharpnessRun:
    """Every measure of `sc` on cfg's model and first split, for the chosen parameters (and per layer); written
    to OUT/<name>_sharpness.{csv,json} unless write=False. A JSON made by the same request is reused."""
    csv_path, json_path = paths_for(cfg)
    model, ckpt = load_centre(cfg, cfg.checkpoint)  # first: a wrong path is a one-line error
    key = {"checkpoint_sha256": file_sha256(cfg.checkpoint), "surface": _request(cfg), "sharpness": asdict(sc)}
    cached = read_cached(json_path, key) if write else None
    if cached is not None:
        return SharpnessRun(cached["rows"], cached["density"], csv_path, json_path, True)
    model = model.to(info.device).eval()
    sets, _, _ = load_sets(dataclasses.replace(cfg, splits=cfg.splits[:1]), ckpt, info.device,
                        resolve_batch_size(cfg.eval_batch_size, info.device))
    theta0 = snapshot(model_tensors(model), device="cpu")
    spec = DirectionSpec("weights", cfg.norm, cfg.ignore, cfg.seed)
    s = Subject(model, theta0, sets[0].source, sets[0].metric, info, spec, cfg.x)
    rows, density = [], {}
    for label, names in subsets(model, moved_tensors(model, theta0, cfg.params or None, cfg.trainable_only),
                                sc.per_layer, cfg.params):
        if any(m in HESSIAN_MEASURES for m in sc.measures):
            more, dens = hessian_rows(s, label, names, sc)
            rows += more
            if dens is not None:
                density[label] = dens
        rows += loss_rows(s, label, names, sc)
        if "width" in sc.measures:
            rows += width_rows(s, label, names, sc)
        log(f"measured {label}: {len(names)} tensors")
    if write and info.is_main:
        write_csv(csv_path, [{**r, "settings": _settings_text(r["settings"])} for r in rows], COLUMNS, ".6g")
        write_cached(json_path, key, {"rows": rows, "density": density})
    return SharpnessRun(rows, density, csv_path if write else None, json_path if write else None, False)


def _request(cfg: SurfaceConfig) -> dict[str, Any]:
    """What of a SurfaceConfig decides the numbers (not where they go)."""
    return {k: v for k, v in asdict(cfg).items() if k not in ("out", "name", "progress", "device", "flush_seconds")}


def _settings_text(settings: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in settings.items() if k != "values")


def table_text(rows: list[dict[str, Any]]) -> str:
    """Rows as a terminal table: one line per subset and measure, value +- standard error."""
    lines = [f"{'subset':<24} {'measure':<26} {'value':>12}   {'stderr':>10}   settings"]
    for r in rows:
        se = "" if not np.isfinite(r["stderr"]) else f"{r['stderr']:.3g}"
        lines.append(f"{r['subset'][:24]:<24} {r['measure']:<26} {r['value']:>12.5g} +- {se:>10}   "
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

