"""Pure plotting functions: arrays and an Axes in, the artist out. No file I/O, no savefig, no pyplot state.

2D values z have shape (len(y), len(x)), row = y (landscape.base.grid, and matplotlib's own convention), so they go
to matplotlib as they are. Non-finite values (NaN or inf far from the minimum) are masked, and levels are clipped
to [vmin, vmax], so a surface that diverges at its corners still draws.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes


def finite_range(z: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> tuple[float, float]:
    """(vmin, vmax) over the finite values unless given; a flat or empty array still gets a valid range."""
    finite = np.asarray(z, dtype=float)[np.isfinite(z)]
    lo = float(finite.min()) if vmin is None and finite.size else (0.0 if vmin is None else vmin)
    hi = float(finite.max()) if vmax is None and finite.size else (lo + 1.0 if vmax is None else vmax)
    if hi <= lo:
        hi = lo + max(abs(lo) * 1e-3, 1e-6)
    return lo, hi


def capped(z: np.ndarray, done: np.ndarray, vmax: float | None) -> np.ndarray:
    """z clipped at vmax, computed points that diverged (inf, NaN) included: a flat cap, not holes. Points not
    computed yet (done False) stay NaN. vmax None: z as it is."""
    if vmax is None:
        return z
    return np.where(done, np.minimum(np.nan_to_num(np.asarray(z, float), nan=vmax, posinf=vmax), vmax), np.nan)


PAPER_LEVELS = (0.1, 10.0, 0.5)  # np.arange(start, stop, step): the loss levels of Li et al.'s plot_2D.py


def levels_for(z: np.ndarray, n: int = 20, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """`n` evenly spaced levels from the lowest finite value (or vmin) to the highest (or vmax)."""
    lo, hi = finite_range(z, vmin, vmax)
    return np.linspace(lo, hi, n)


def loss_levels(z: np.ndarray, n: int | None = None, vmax: float | None = None, crossed: int = 3) -> np.ndarray:
    """The contour levels of a loss surface. Given `n` or `vmax`: n (default 20) evenly spaced levels from the
    lowest value to vmax (default the highest). Else Li et al.'s, 0.1 to 10 by 0.5, which every surface shares, so
    two minima drawn apart compare ring by ring; a loss that crosses fewer than `crossed` of them (all above 10,
    or a basin shallower than a step) gets 20 evenly spaced levels over its own range instead."""
    if n is not None or vmax is not None:
        return levels_for(z, n or 20, vmax=vmax)
    paper = np.arange(*PAPER_LEVELS)
    lo, hi = finite_range(z)
    if int(np.sum((paper > lo) & (paper < hi))) >= crossed:
        return paper
    return levels_for(z, 20)


def _masked(z: np.ndarray) -> np.ma.MaskedArray:
    return np.ma.masked_invalid(np.asarray(z, dtype=float))


def contour(ax: Axes, x: np.ndarray, y: np.ndarray, z: np.ndarray, *, levels: np.ndarray | None = None,
            label_levels: bool = True, label_rings: int = 4, **kw: Any) -> Any:
    """Contour lines of z (shape (len(y), len(x))) with labelled levels: the paper's 2D plot. Every other level is
    labelled from the innermost ring drawn, so each panel names the ring around its minimum, up to `label_rings`
    labels (the outer rings crowd into the corners; a colourbar names them)."""
    levels = levels_for(z) if levels is None else levels
    cs = ax.contour(x, y, _masked(z), levels=levels, cmap=kw.pop("cmap", "summer"), **kw)
    if label_levels and len(cs.levels):
        finite = np.asarray(z, float)[np.isfinite(z)]
        drawn = cs.levels[cs.levels > finite.min()] if finite.size else cs.levels  # the innermost ring first
        for t in ax.clabel(cs, drawn[::2][:label_rings], inline=False, fontsize=7, fmt="%.3g"):
            t.set_bbox({"facecolor": "white", "edgecolor": "none", "pad": 0.3, "alpha": 0.8})  # the line behind
        _drop_edge_labels(cs, x, y)
        _drop_crowded_labels(cs, ax)
    ax.set_aspect("auto")
    return cs


def sparse_ticks(ax: Axes) -> None:
    """Tick labels that do not run together: a log axis labels its minor ticks at 2 and 5 only (a short decade
    labels every one), and a linear axis of a small panel drops its two end ticks, which meet the other axis's
    at the corner."""
    from matplotlib.ticker import LogLocator, MaxNLocator

    for axis in (ax.xaxis, ax.yaxis):
        if axis.get_scale() == "log":
            axis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
        else:
            axis.set_major_locator(MaxNLocator(nbins=4, prune="both"))


def _drop_crowded_labels(cs: Any, ax: Axes, gap: float = 4.0) -> None:
    """Contour labels that would touch one already kept (innermost first), by their drawn extents and `gap`
    pixels, are removed."""
    renderer = ax.figure.canvas.get_renderer()
    kept: list[Any] = []
    for t in list(cs.labelTexts):
        box = t.get_window_extent(renderer).padded(gap)
        if any(box.overlaps(k) for k in kept):
            cs.labelTexts.remove(t)
            t.remove()
        else:
            kept.append(box)


def _drop_edge_labels(cs: Any, x: np.ndarray, y: np.ndarray, margin: float = 0.06) -> None:
    """Contour labels within `margin` of the plot's edge are removed: they stick out of the axes into the title
    or the neighbouring panel."""
    (x0, x1), (y0, y1) = (float(np.min(x)), float(np.max(x))), (float(np.min(y)), float(np.max(y)))
    mx, my = margin * (x1 - x0), margin * (y1 - y0)
    for t in list(cs.labelTexts):
        px, py = t.get_position()
        if not (x0 + mx < px < x1 - mx and y0 + my < py < y1 - my):
            cs.labelTexts.remove(t)
            t.remove()


def contourf(ax: Axes, x: np.ndarray, y: np.ndarray, z: np.ndarray, levels: np.ndarray | None = None,
             **kw: Any) -> Any:
    """Filled contours; values above the top level are drawn in the top colour (extend='both')."""
    levels = levels_for(z) if levels is None else levels
    zc = np.clip(_masked(z), levels[0], levels[-1])
    return ax.contourf(x, y, zc, levels=levels, cmap=kw.pop("cmap", "viridis"), extend="both", **kw)


def heatmap(ax: Axes, x: np.ndarray, y: np.ndarray, z: np.ndarray, vmin: float | None = None,
            vmax: float | None = None, **kw: Any) -> Any:
    lo, hi = finite_range(z, vmin, vmax)
    return ax.pcolormesh(x, y, _masked(z), vmin=lo, vmax=hi, shading="nearest",
                         cmap=kw.pop("cmap", "viridis"), **kw)


def surface3d(ax: Axes, x: np.ndarray, y: np.ndarray, z: np.ndarray, vmin: float | None = None,
              vmax: float | None = None, **kw: Any) -> Any:
    """A 3D surface on an Axes3D (subplot_kw={'projection': '3d'}); values are clipped to [vmin, vmax]."""
    lo, hi = finite_range(z, vmin, vmax)
    zc = np.clip(np.where(np.isfinite(z), z, hi), lo, hi)
    xx, yy = np.meshgrid(x, y)
    return ax.plot_surface(xx, yy, zc, cmap=kw.pop("cmap", "viridis"), vmin=lo, vmax=hi, linewidth=0,
                           antialiased=True, **kw)


def markers(ax: Axes, coords: np.ndarray, names: Sequence[str], kind: str = "points", every: int | None = None,
            **kw: Any) -> list[Any]:
    """Named points on a 2D plot: an optimizer's path (kind "path": a line through them in order, every k-th one
    labelled, about ten labels in all, and the last) or the checkpoints a plane goes through (each labelled)."""
    c = np.asarray(coords, float)
    color = kw.pop("color", "tab:red")
    if kind == "path":
        artists = ax.plot(c[:, 0], c[:, 1], "-o", color=color, markersize=3, linewidth=1.2, **kw)
        step = every or max(1, -(-len(c) // 10))
        labelled = sorted(set(range(0, len(c), step)) | {len(c) - 1})
    else:
        artists = [ax.scatter(c[:, 0], c[:, 1], s=36, color=color, edgecolors="white", zorder=5, **kw)]
        labelled = list(range(len(c)))
    box = None if kind == "path" else {"facecolor": "white", "edgecolor": "none", "pad": 0.5, "alpha": 0.75}
    for i in labelled:  # a plane's few points: each name on a light box, readable on any colour
        artists.append(ax.annotate(names[i], (c[i, 0], c[i, 1]), textcoords="offset points", xytext=(4, 4),
                                   fontsize=7, color=color, bbox=box))
    return artists


def eigen_ratio(ax: Axes, x: np.ndarray, y: np.ndarray, lambda_max: np.ndarray, lambda_min: np.ndarray,
                vmax: float = 0.5, **kw: Any) -> Any:
    """|lambda_min / lambda_max| over a grid, as Li et al. (2018, Fig. 7) draw it: viridis from 0 (blue: convex,
    no negative curvature to speak of) to 0.5 (yellow: strong negative curvature), values above in yellow."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.abs(np.asarray(lambda_min, float) / np.asarray(lambda_max, float))
    return ax.pcolormesh(x, y, _masked(ratio), vmin=0.0, vmax=vmax, shading="nearest", cmap=kw.pop("cmap", "viridis"),
                         **kw)


def curve_1d(ax: Axes, x: np.ndarray, loss: np.ndarray, acc: np.ndarray | None = None, *, label: str = "",
             acc_ax: Axes | None = None, log: bool = False, loss_max: float | None = None, **line_kw: Any
             ) -> list[Any]:
    """Loss on `ax` in blue and accuracy on the twin `acc_ax` in red (the reference's 1D figure);
    `line_kw` (linestyle, linewidth, alpha) tells curves of different models or splits apart."""
    loss = np.where(np.isfinite(loss), loss, np.nan)
    lines = ax.plot(x, loss, color="tab:blue", label=f"{label} loss".strip(), **line_kw)
    ax.set_yscale("log" if log else "linear")
    if loss_max is not None:
        ax.set_ylim(top=loss_max)
    if acc is not None and acc_ax is not None and np.isfinite(acc).any():
        lines += acc_ax.plot(x, acc, color="tab:red", label=f"{label} accuracy".strip(), **line_kw)
        acc_ax.set_ylim(0, 100)
    return lines


def plot_surface(x: np.ndarray, y: np.ndarray | None, values: dict[str, np.ndarray], metric: str,
                 kind: str = "contour", ax: Axes | None = None, **kw: Any) -> Any:
    """One metric of a surface drawn as `kind` on `ax`, or on a new figure's Axes when ax is None.

    2D kinds: contour, filled, heatmap, 3d. A 1D curve takes kind "line" (or the default): the loss metric,
    with the accuracy of the same prefix on a twin axis when it is there."""
    if ax is None:
        import matplotlib.pyplot as plt  # a figure is only made when the caller has none

        _, ax = plt.subplots(subplot_kw={"projection": "3d"} if kind == "3d" else {})
    z = values[metric]
    if y is None:
        if kind not in ("contour", "line"):
            raise ValueError(f"a 1D curve is drawn as 'line', not {kind!r}")
        acc = values.get(metric[:-len("loss")] + "acc") if metric.endswith("loss") else None
        return curve_1d(ax, x, z, acc, acc_ax=ax.twinx() if acc is not None else None, **kw)
    kinds = {"contour": contour, "filled": contourf, "heatmap": heatmap, "3d": surface3d}
    if kind not in kinds:
        raise ValueError(f"unknown kind {kind!r}; choose one of: {', '.join(kinds)}")
    return kinds[kind](ax, x, y, z, **kw)


def density_lines(ax: Axes, grid: np.ndarray, density: np.ndarray, label: str = "", floor: float = 1e-8,
                     **line_kw: Any) -> list[Any]:
    """The Hessian's eigenvalue density on a log scale (as Ghorbani et al. 2019 and PyHessian draw it), values
    below `floor` raised to it so the log axis keeps the empty gaps between outliers visible."""
    lines = ax.semilogy(grid, np.maximum(density, floor), label=label, **line_kw)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density (log scale)")
    return lines


def path_line(ax: Axes, t: np.ndarray, values: np.ndarray, label: str, **kw: Any) -> Any:
    """One metric along a path between two minima, t = 0 (A) to 1 (B), with a marker at each evaluated t."""
    (line,) = ax.plot(t, np.asarray(values, float), marker="o", markersize=2.5, label=label, **kw)
    ax.set_xlabel("t")
    return line


def plane_path(ax: Axes, coords: np.ndarray, label: str = "curve", **kw: Any) -> Any:
    """A curve drawn on a plane's 2D plot, through its (n, 2) coordinates in order."""
    (line,) = ax.plot(coords[:, 0], coords[:, 1], color=kw.pop("color", "tab:blue"), linewidth=2.0, label=label,
                      **kw)
    return line
