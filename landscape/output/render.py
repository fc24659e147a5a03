"""Figure files from surface files: the 2D set (contour, filled contour, heatmap, 3D) and 1D curves.

Reads `Surface` objects (core.surface_file), composes them with the pure functions of drawing.artists, and saves
PNG and PDF. Used by the CLIs and the figure scripts; it never evaluates a model.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import matplotlib

if "matplotlib.pyplot" not in sys.modules:  # a command: files only, no display; a notebook keeps its backend
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from landscape.base.config import CURVATURE_LABELS, run_tag  # noqa: E402
from landscape.base.figure_config import PlotConfig  # noqa: E402
from landscape.connectivity.barriers import barrier, barrier_series  # noqa: E402
from landscape.core.curve_file import Curve  # noqa: E402
from landscape.core.surface_file import Surface  # noqa: E402
from landscape.drawing import artists  # noqa: E402
from landscape.output import viewers  # noqa: E402

KINDS_2D = ("contour", "contourf", "heatmap", "3d")
DEFAULTS = PlotConfig()  # frozen, so one shared default is safe


def save(fig: plt.Figure, stem: str, formats: Sequence[str] = ("png", "pdf")) -> list[str]:
    """The figure in each of `formats` that matplotlib writes (html pages are viewers'), then closed."""
    paths = []
    for ext in (f for f in formats if f != "html"):
        path = f"{stem}.{ext}"
        fig.savefig(path, dpi=150, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def _title(metric: str, title: str) -> str:
    return f"{title}  {metric.replace('_', ' ')}".strip()


def render_2d(s: Surface, out_stem: str, cfg: PlotConfig = DEFAULTS) -> list[str]:
    """For each stored metric: contour lines with labels, filled contours, heatmap and 3D surface, the file's
    markers (a plane's checkpoints, a trajectory) on the 2D ones; and with "html" in cfg.formats one interactive
    page of every metric (STEM.html). Evenly spaced levels (viewers.surface_levels: a loss's are Li et al.'s 0.1
    to 10 by 0.5 unless cfg.levels or cfg.loss_max says otherwise), a loss drawn flat above its top level, and
    every panel its colourbar. Titled cfg.title, or from the centre's training (describe)."""
    assert s.y is not None
    title = describe(s) if cfg.title is None else cfg.title
    paths = []
    levels = viewers.surface_levels(s, cfg.levels, cfg.loss_max)
    for metric, z in s.values.items():
        vmax = levels[metric][-1] if metric in s.loss_metrics() else None  # a loss: flat at its top level
        z = artists.capped(z, s.done, vmax)
        name = metric.replace("_", " ")
        for kind in KINDS_2D:
            fig = plt.figure(figsize=(5, 4))
            ax = fig.add_subplot(projection="3d") if kind == "3d" else fig.add_subplot()
            if kind == "contour":
                fig.colorbar(artists.contour(ax, s.x, s.y, z, levels=levels[metric]), ax=ax, label=name)
            elif kind == "contourf":
                fig.colorbar(artists.contourf(ax, s.x, s.y, z, levels[metric]), ax=ax, label=name)
            elif kind == "heatmap":
                fig.colorbar(artists.heatmap(ax, s.x, s.y, z, vmax=vmax), ax=ax, label=name)
            else:
                artists.surface3d(ax, s.x, s.y, z, vmax=vmax)
            m = s.annotations.markers
            if s.annotations.curve is not None and kind != "3d":
                line = artists.plane_path(ax, s.annotations.curve, label="trained curve")
                fig.legend([line], [line.get_label()], fontsize=7, loc="upper center", bbox_to_anchor=(0.5, 0.0),
                           frameon=False)  # below the figure: clear of the contour labels
            if m is not None and kind != "3d":
                artists.markers(ax, m.coords, m.names, m.kind)
            if kind != "3d":
                artists.sparse_ticks(ax)  # the two axes' end ticks meet at the corner
            xlabel, ylabel = s.axis_names()
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.set_title(_title(metric, title), fontsize=9)
            paths += save(fig, f"{out_stem}_{metric}_{kind}", cfg.formats)
    if "html" in cfg.formats:
        paths.append(viewers.write_html(s, f"{out_stem}.html", title, levels=levels))
    return paths


def render_hessian_map(s: Surface, out_stem: str, cfg: PlotConfig = DEFAULTS) -> list[str]:
    """The |lambda_min/lambda_max| map of a Hessian map file (landscape.hessian_map) with its colour bar, and the
    lambda_max map beside it."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    xlabel, ylabel = s.axis_names()
    curvature = s.fingerprint.get("curvature", "hessian")
    label = CURVATURE_LABELS.get(curvature, curvature)
    fig.colorbar(artists.eigen_ratio(axes[0], s.x, s.y, s.values["lambda_max"], s.values["lambda_min"]), ax=axes[0])
    axes[0].set_title("|lambda_min / lambda_max|" if curvature == "hessian" else
                      f"{label}: |lambda_min / lambda_max| (0 where it is positive semi-definite)", fontsize=9)
    fig.colorbar(artists.heatmap(axes[1], s.x, s.y, s.values["lambda_max"]), ax=axes[1])
    axes[1].set_title(f"{label} lambda_max", fontsize=9)
    for ax in axes:
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    fig.suptitle(describe(s) if cfg.title is None else cfg.title, fontsize=9)
    fig.tight_layout()
    return save(fig, out_stem, cfg.formats)


def render_density(curves: Sequence[tuple[str, np.ndarray, np.ndarray]], sigma: float, out_stem: str,
                   formats: Sequence[str] = ("png", "pdf"), title: str = "") -> list[str]:
    """The Hessian's eigenvalue density, one curve per (label, grid, density), the smoothing width in the title."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, grid, density in curves:
        artists.density_lines(ax, grid, density, label)
    if any(label for label, _, _ in curves):
        ax.legend(fontsize=7)
    ax.set_title(f"{title}  Hessian eigenvalue density (SLQ, Gaussian width {sigma:.3g})".strip(), fontsize=9)
    fig.tight_layout()
    return save(fig, out_stem, formats)


def render_1d(surfaces: Sequence[tuple[str, Surface]], out_stem: str, cfg: PlotConfig = DEFAULTS,
              title: str = "") -> list[str]:
    """One or more 1D surfaces overlaid: loss blue and accuracy red on twin axes; a line style per surface
    (solid, dashed, ...); train drawn thick and test thin, or train solid and test dashed for one surface.
    Titled cfg.title if given, else `title`."""
    fig, ax = plt.subplots(figsize=(6, 4))
    acc_ax = ax.twinx()
    styles = ["-", "--", ":", "-."]
    for i, (label, s) in enumerate(surfaces):
        for j, loss in enumerate(s.loss_metrics()):  # train_loss, test_loss; or loss; or a metric of the user's
            prefix = loss[:-len("loss")] if loss.endswith("loss") else ""
            first, split = j == 0, prefix.rstrip("_")
            if len(surfaces) == 1:
                kw = {"linestyle": "-" if first else "--", "linewidth": 1.5}
            else:
                kw = {"linestyle": styles[i % len(styles)], "linewidth": 2.0 if first else 1.0,
                      "alpha": 1.0 if first else 0.6}
            acc = s.values.get(f"{prefix}acc") if loss.endswith("loss") else None
            artists.curve_1d(ax, s.x, artists.capped(s.values[loss], s.done, cfg.loss_max), acc,
                          label=f"{label} {split}".strip(), acc_ax=acc_ax, log=cfg.log, loss_max=cfg.loss_max, **kw)
    named = [s for _, s in surfaces if s.annotations.axis_labels]
    ax.set_xlabel(named[0].axis_names()[0] if named else "alpha")
    ax.set_ylabel("loss (log scale)" if cfg.log else "loss")
    acc_ax.set_ylabel("accuracy (%)")
    handles = ax.get_lines() + acc_ax.get_lines()
    if len(handles) > 6:  # many curves (a plane's edges): the legend below the axes, not over the curves
        ax.legend(handles, [h.get_label() for h in handles], fontsize=6, loc="upper center",
                  bbox_to_anchor=(0.5, -0.15), ncol=2)
    else:
        ax.legend(handles, [h.get_label() for h in handles], fontsize=7, loc="upper center")
    ax.set_title(title if cfg.title is None else cfg.title, fontsize=9)
    return save(fig, out_stem, cfg.formats)


def describe(s: Surface) -> str:
    """A short title from how the centre was trained: WD, BS and test error, as in Li et al. Fig. 3."""
    t, parts = s.origin.training, []
    if t.global_batch_size is not None:
        parts.append(f"WD={t.weight_decay or 0:g}, BS={t.global_batch_size}")
    if "test_acc" in s.origin.metrics:
        parts.append(f"test error {100 - s.origin.metrics['test_acc']:.2f}%")
    return ", ".join(parts)


def done_fraction(s: Surface) -> float:
    return float(np.mean(s.done))


PATH_STYLES = {"line": ("line", "tab:red", "--"), "aligned_line": ("aligned line", "tab:orange", "-."),
               "curve": ("curve", "tab:blue", "-")}


def render_curve(curve: Curve, out_stem: str, cfg: PlotConfig = DEFAULTS) -> list[str]:
    """Every path of a curve file along t, one panel per loss and per error (train, test), the paths' barriers in
    its title; the endpoints named in the figure's title."""
    first = next(iter(curve.paths.values()))
    keys = list(barrier_series(first.values, first.loss_metrics()))
    cols = min(2, len(keys))  # losses in the first column, errors in the second: train above, test below
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.3 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        heights = path_panel(ax, curve, key, cfg.loss_max if key.endswith("loss") else None)
        unit = " (%)" if key.endswith("error") else ""
        ax.set_title(f"{key.replace('_', ' ')}{unit}: barrier " + ", ".join(f"{k} {v:.3g}" for k, v in heights.items()),
                     fontsize=8)
        if cfg.log and key.endswith("loss"):
            ax.set_yscale("log")
        ax.set_ylabel(key.replace("_", " ") + unit + (" (log scale)" if cfg.log and key.endswith("loss") else ""))
        ax.legend(fontsize=7)
    a, b = run_tag(curve.origin.checkpoint), run_tag(curve.origin.target)
    if a == b:  # e.g. two seeds' runs in folders of the same name: the paths' last folders tell them apart
        a, b = ("/".join(p.split(os.sep)[-4:]) for p in (curve.origin.checkpoint, curve.origin.target))
    title = f"{a} (t=0) -> {b} (t=1)"
    fig.suptitle(title if cfg.title is None else cfg.title, fontsize=9)
    fig.tight_layout()
    return save(fig, out_stem, cfg.formats)


def path_panel(ax: plt.Axes, curve: Curve, key: str, loss_max: float | None = None) -> dict[str, float]:
    """One barrier series (train_loss, test_error, ...) of every path of a curve along t on `ax`; returns each
    path's barrier by its label (line, aligned line, bezier or polychain)."""
    heights = {}
    for name, s in curve.paths.items():
        values = barrier_series(s.values, s.loss_metrics()).get(key)
        if values is None:
            continue
        label, color, style = PATH_STYLES[name]
        label = curve.curve if name == "curve" else label
        heights[label] = barrier(curve.t, values).height
        artists.path_line(ax, curve.t, artists.capped(values, s.done, loss_max), label, color=color, linestyle=style)
    return heights
