"""Are the flat and the sharp minimum in one basin? The minima of Li et al.'s Fig. 3 (figures.flat_vs_sharp's runs),
joined three ways: the straight line, the straight line after aligning B's hidden units to A's (weight matching),
and a trained Bezier curve (Garipov et al. 2018), for three pairs:

  batch         the small-batch and the large-batch minimum (weight decay 0): flat versus sharp
  weight_decay  the two small-batch minima, weight decay 0 and the preset's other one
  seed          two small-batch runs of the same setting from different seeds, where alignment matters most

  python -m figures.connectivity --preset quick --out figures_out/connectivity   # MNIST-1D MLP, ~2 min, 2 CPU cores
  torchrun --standalone --nproc_per_node=8 -m figures.connectivity --preset paper --out connectivity   # VGG-9

Trains (or reuses, with --out of figures.flat_vs_sharp's run) the runs, runs landscape.connect for each pair
(resumable), computes the plane through A, the aligned B and the bend with the curve on it, and writes
connectivity.{png,pdf} (a row per pair: train loss and test error along t, the plane), summary.csv (each path's
barriers, train and test) and every .h5 behind them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

import figures.flat_vs_sharp as fvs
from figures.common import chosen_preset, preset_parser
from landscape.base import ArgumentParser, CurveConfig, SurfaceConfig, run_cli, run_tag, write_csv
from landscape.connectivity import path_barriers
from landscape.core import Curve, Surface
from landscape.pipelines import run_connect, run_surface
from landscape.runtime import DistInfo, exclusive_output, print0, process_group


@dataclass(frozen=True)
class Preset:
    runs: fvs.Preset  # the minima: figures.flat_vs_sharp's preset of the same scale
    curve_epochs: int
    curve_lr: float
    curve_batch_size: int
    points: int = 21  # values of t
    plane_points: int = 25
    samples: int | None = None  # evaluation subset per split (None: all)
    bn_recalibrate: int | None = None  # None: the whole training subset, for models with BatchNorm
    second_seed: int = 1
    loss_max: float = 2.0  # the plane's top contour


PRESETS = {
    "quick": Preset(fvs.PRESETS["quick"], curve_epochs=100, curve_lr=0.1, curve_batch_size=128),
    "paper": Preset(fvs.PRESETS["paper"], curve_epochs=60, curve_lr=0.03, curve_batch_size=128, samples=10_000,
                    bn_recalibrate=40, plane_points=31),
    "smoke": Preset(fvs.PRESETS["smoke"], curve_epochs=2, curve_lr=0.05, curve_batch_size=64, points=5,
                    plane_points=5, samples=128),
}
PAIRS = ("batch", "weight_decay", "seed")


def train_runs(p: Preset, out: str, info: DistInfo, device: str) -> dict[str, tuple[str, str]]:
    """The three pairs' checkpoints (A, B): flat_vs_sharp's four runs, and the small-batch run again from another
    seed (in OUT/runs_seed<N>)."""
    runs = fvs.train_runs(p.runs, out, info, device)
    small, large = p.runs.batch_sizes
    wd0, wd1 = p.runs.weight_decays[0], p.runs.weight_decays[-1]
    again = fvs.train_runs(dataclasses.replace(p.runs, batch_sizes=(small,), weight_decays=(wd0,)),
                           os.path.join(out, f"seed{p.second_seed}"), info, device, seed=p.second_seed)
    return {"batch": (runs[(small, wd0)], runs[(large, wd0)]), "weight_decay": (runs[(small, wd0)], runs[(small, wd1)]),
            "seed": (runs[(small, wd0)], again[(small, wd0)])}


def connect_pair(pair: str, a: str, b: str, p: Preset, out: str, info: DistInfo, device: str
                 ) -> tuple[Curve | None, Surface | None]:
    """The pair's curve file (line, aligned line, Bezier curve) and the plane through A, the aligned B and the
    bend, both on rank 0 (None elsewhere)."""
    folder = os.path.join(out, "connect")
    cfg = SurfaceConfig(checkpoint=a, target=b, out=folder, name=pair, samples=p.samples, align=True,
                        bn_recalibrate=p.bn_recalibrate, device=device, progress=False)
    curve_cfg = CurveConfig(epochs=p.curve_epochs, lr=p.curve_lr, train_batch_size=p.curve_batch_size,
                            points=p.points)
    run = run_connect(cfg, curve_cfg, info)
    plane = SurfaceConfig(checkpoint=a, plane=(run.files.aligned, run.files.bend), plane_points=p.plane_points,
                          splits=("train",), samples=p.samples, bn_recalibrate=p.bn_recalibrate, out=folder,
                          name=f"{pair}_plane", device=device, progress=False)
    surface = run_surface(plane, info, share=False).surface
    print0(f"{pair}: {run.computed} points along the paths computed -> {run.files.curve}")
    return run.curve, surface


def summary_rows(pair: str, curve: Curve) -> list[dict[str, Any]]:
    """One row per path of a pair: its loss and error barriers on train and test, and the endpoints'."""
    rows = []
    for path, s in curve.paths.items():
        found = path_barriers(curve.t, s.values, s.loss_metrics())
        row = {"pair": pair, "a": run_tag(curve.origin.checkpoint), "b": run_tag(curve.origin.target), "path": path,
               "units_moved_pct": 100 * curve.alignment["moved"] / max(1, curve.alignment["units"])}
        for key, b in found.items():
            row[f"{key}_barrier"] = b.height
            row[f"{key}_a"], row[f"{key}_b"] = b.at_a, b.at_b
        rows.append(row)
    return rows


def compose(results: dict[str, tuple[Curve, Surface]], p: Preset, out: str) -> list[str]:
    """A row per pair: train loss along t, test error along t (every path, its barrier in the legend), and the
    plane of the curve with the curve on it."""
    from landscape.drawing import artists
    from landscape.output import render

    fig, axes = render.plt.subplots(len(results), 3, figsize=(13, 3.6 * len(results)), squeeze=False,
                                    layout="constrained")
    levels = np.linspace(0.0, p.loss_max, 21)  # linear, shared by the planes compared: 0.1 apart at loss_max 2
    for row, (pair, (curve, plane)) in zip(axes, results.items()):
        for ax, key in zip(row[:2], ("train_loss", "test_error")):
            heights = render.path_panel(ax, curve, key)
            ax.set_title(f"{pair}: {key.replace('_', ' ')}\nbarrier " + ", ".join(f"{k} {v:.3g}"
                                                                              for k, v in heights.items()), fontsize=8)
            ax.set_ylabel(key.replace("_", " ") + (" (%)" if key.endswith("error") else ""))
            ax.legend(fontsize=7)
        ax = row[2]
        z = artists.capped(plane.values["train_loss"], plane.done, p.loss_max)
        fig.colorbar(artists.contourf(ax, plane.x, plane.y, z, levels), ax=ax, label="train loss (same levels in "
                     "every plane)")
        if plane.annotations.curve is not None:
            artists.plane_path(ax, plane.annotations.curve, color="white")
        m = plane.annotations.markers
        artists.markers(ax, m.coords, ["A", "B aligned", "bend"], m.kind)
        ax.set_title(f"{pair}: train loss on the plane of the curve", fontsize=9)
        xlabel, ylabel = plane.axis_names()
        ax.set(xlabel=xlabel, ylabel=ylabel)
        ax.legend(fontsize=7, loc="lower right")
    (small, large), wds = p.runs.batch_sizes, p.runs.weight_decays
    fig.suptitle(f"{p.runs.model} on {p.runs.dataset}: are the minima connected? (batch {small} vs {large}, weight "
                 f"decay {wds[0]:g} vs {wds[-1]:g}, seed 0 vs {p.second_seed}; B aligned to A)", fontsize=10)
    return render.save(fig, os.path.join(out, "connectivity"))


def verdict(rows: list[dict[str, Any]]) -> str:
    """One line per pair: the train-loss barrier of each path."""
    lines = []
    for pair in PAIRS:
        got = {r["path"]: r.get("train_loss_barrier", np.nan) for r in rows if r["pair"] == pair}
        lines.append(f"{pair:>12}: train-loss barrier " + ", ".join(f"{k} {v:.3g}" for k, v in got.items()))
    return "\n".join(lines)


def get_parser(add_help: bool = True) -> ArgumentParser:
    return preset_parser("python -m figures.connectivity", __doc__, PRESETS, "figures_out/connectivity", add_help)


def main(argv: Sequence[str] | None = None) -> None:
    args = get_parser().parse_args(argv)
    p = PRESETS[args.preset]
    p = dataclasses.replace(p, runs=chosen_preset(args, {args.preset: p.runs}))  # --epochs: the minima's
    with process_group(args.device) as info, exclusive_output(args.out, info):
        pairs = train_runs(p, args.out, info, args.device)
        results = {pair: connect_pair(pair, a, b, p, args.out, info, args.device) for pair, (a, b) in pairs.items()}
        if not info.is_main:
            return
        rows = [r for pair, (curve, _) in results.items() for r in summary_rows(pair, curve)]
        table = os.path.join(args.out, "summary.csv")
        write_csv(table, rows, list(dict.fromkeys(k for r in rows for k in r)), float_format=".6g")
        files = compose(results, p, args.out)
    print(verdict(rows))
    print(f"figures: {', '.join(files)}\ntable: {table}")


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
