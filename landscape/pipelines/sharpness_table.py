"""A model's sharpness as one table: every registered measure chosen (pipelines.measure_registry; the built-in
ones read curvature.hessian, curvature.density and curvature.sharpness) on the same data, for the chosen
parameters and, with per_layer, for each layer's own; each row a value, its standard error, whether it is only a
lower bound, and the settings that made it. Written as CSV and JSON beside the checkpoint's surfaces; the JSON
also keys a rerun, which reuses it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from torch import nn

from landscape.base.config import SurfaceConfig, run_tag
from landscape.base.files import read_cached, write_cached, write_csv
from landscape.core.directions import DirectionSpec, output_axes
from landscape.core.params import model_tensors, snapshot
from landscape.curvature.costs import estimate_text, graph_budget_text, time_units
from landscape.curvature.density import Density
from landscape.pipelines import hessian_measures, loss_measures  # noqa: F401  (the built-in measures register)
from landscape.pipelines.data_spread import spread_parts, spread_rows
from landscape.pipelines.inputs import load_centre, load_sets, moved_tensors, resolve_batch_size
from landscape.pipelines.measure_registry import (  # noqa: F401  (SharpnessConfig's home for its users)
    MEASURES,
    SharpnessConfig,
    Subject,
    chosen_measures,
    measure_costs,
)
from landscape.runtime.distributed import DistInfo, broadcast_object, print0
from landscape.runtime.metrics import Metric
from landscape.runtime.sources import StreamSource, TensorSource

COLUMNS = ["subset", "measure", "value", "stderr", "bound", "settings"]


@dataclass(frozen=True)
class SharpnessRun:
    rows: list[dict[str, Any]]  # subset, measure, value, stderr, bound, settings
    density: dict[str, dict[str, list]]  # subset -> SLQ nodes and weights (runs x steps)
    csv: str | None
    json: str | None
    reused: bool


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
    rows, density = measure_table(model, sets[0].source, sets[0].metric, sc, info=info, spec=spec,
                                  loss_name=cfg.loss_name, params=cfg.params, trainable_only=cfg.trainable_only,
                                  log=log)
    if write and info.is_main:
        write_csv(csv_path, [{**r, "settings": _settings_text(r["settings"])} for r in rows], COLUMNS, ".6g")
        write_cached(json_path, key, {"rows": rows, "density": density})
    return SharpnessRun(rows, density, csv_path if write else None, json_path if write else None, False)


def measure_table(model: nn.Module, source: TensorSource | StreamSource, metric: Metric, sc: SharpnessConfig,
                  *, info: DistInfo, spec: DirectionSpec, loss_name: str | None = None,
                  params: Any = (), trainable_only: bool = False, log: Callable[[str], None] = print0
                  ) -> tuple[list[dict[str, Any]], dict[str, dict[str, list]]]:
    """Every measure of `sc` on `model` over `source` (the command's and landscape.sharpness_table's one path):
    the rows, and the SLQ densities by subset. `params`: name globs or a predicate choosing the parameters. The
    measures run in the registry's order, one subset after another."""
    measures = chosen_measures(sc.measures)
    theta0 = snapshot(model_tensors(model), device="cpu")
    s = Subject(model, theta0, source, metric, info=info, spec=spec, loss_name=loss_name, axes=output_axes(model),
                lanczos_needs=frozenset().union(*(m.lanczos for m in measures)), curvature=sc.curvature,
                memory=None if sc.curvature_memory is None else sc.curvature_memory << 20)
    chosen = subsets(model, moved_tensors(model, theta0, params or None, trainable_only), sc.per_layer, params)
    parts = spread_parts(sc, source)
    announce_costs(s, chosen[0][1], sc, len(chosen), log)
    progress = Progress(log, len(measures) * len(chosen))
    rows = []
    for label, names in chosen:
        for m in measures:
            if not s.needs_hessian(m, names):
                s.release()  # its kept graphs go before a measure that does not need them
            with progress.step(label, m.name):
                rows += m.rows(s, label, names, sc)
        s.release()
    rows += spread_rows(s, *chosen[0], sc, parts, log)
    return rows, s.densities


def announce_costs(s: Subject, names: list[str], sc: SharpnessConfig, n_subsets: int, log: Callable[[str], None]
                   ) -> dict[str, tuple[float, str]]:
    """Time one forward pass, gradient and Hessian-vector product at the centre, then log each measure's estimate
    and the memory the Hessian graphs may keep; returns the estimates."""
    needs_hessian = any(m.hessian or m.lanczos for m in chosen_measures(sc.measures))
    units = time_units(s.mean_loss(names), s.hessian(names) if needs_hessian else None)
    units = broadcast_object(units)
    costs = measure_costs(sc, units)
    log(estimate_text(costs, n_subsets))
    if needs_hessian:
        log(graph_budget_text(units, s.budget))
    return costs


def _request(cfg: SurfaceConfig) -> dict[str, Any]:
    """What of a SurfaceConfig decides the numbers (not where they go)."""
    return {k: v for k, v in asdict(cfg).items() if k not in ("out", "name", "progress", "device", "flush_seconds")}


def _settings_text(settings: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in settings.items()
                    if k not in ("values", "spans"))


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

