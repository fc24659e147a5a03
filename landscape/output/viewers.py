"""A surface file in other viewers' formats: VTK PolyData (.vtp) for ParaView, as the reference implementation's
h52vtp offers, and one self-contained interactive HTML page (plotly) that works offline.

Both read a `Surface` (core.surface_file) and never evaluate a model. The page embeds plotly's JavaScript (~4.6 MB), so
opening it fetches nothing: a 3D surface per metric (a menu switches between them) that can be turned and zoomed,
its contour lines projected on the floor at the PNG figures' levels (surface_levels), hover values, and the
trajectory or the plane's checkpoints when the file has them.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

import numpy as np

from landscape.base.errors import UserError
from landscape.base.files import atomic_path, write_text
from landscape.core.surface_file import Surface
from landscape.drawing.artists import capped, levels_for, loss_levels

LOG_OFFSET = 0.1  # --log draws ln(z + 0.1), as the reference implementation's h52vtp


def vtp_values(s: Surface, metric: str, log: bool = False, zmin: float | None = None, zmax: float | None = None,
               interp: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, z (len(y), len(x))) as a .vtp draws them: optionally resampled to `interp` points per axis
    (cubic where the values are finite), log-scaled, and clipped to [zmin, zmax]; non-finite values at zmax."""
    _check_2d(s, metric)
    x, y, z = s.x, s.y, np.asarray(s.values[metric], float)
    assert y is not None
    finite = np.isfinite(z)
    if not finite.any():
        raise UserError(f"{metric} has no finite value yet; compute the surface first")
    if interp:  # the spline needs every value: points not computed take the largest computed one
        from scipy.interpolate import RectBivariateSpline

        spline = RectBivariateSpline(y, x, np.where(finite, z, np.max(z[finite])), kx=min(3, len(y) - 1),
                                     ky=min(3, len(x) - 1))
        x, y = np.linspace(x[0], x[-1], interp), np.linspace(y[0], y[-1], interp)
        z = spline(y, x)
        finite = np.ones_like(z, bool)
    if log:
        z = np.log(np.clip(z, 0.0, None) + LOG_OFFSET)
    if zmin is not None or zmax is not None:
        z = np.clip(z, zmin, zmax)
    return x, y, np.where(finite, z, np.max(z[finite]) if zmax is None else zmax)


def write_vtp(s: Surface, path: str, metric: str, *, log: bool = False, zmin: float | None = None,
              zmax: float | None = None, interp: int | None = None) -> str:
    """The surface of `metric` as VTK XML PolyData (ASCII): one point per grid point at (alpha, beta, value) with
    the value as point data, and one quad per grid cell. Written atomically; returns the path."""
    x, y, z = vtp_values(s, metric, log, zmin, zmax, interp)
    nx, ny = len(x), len(y)
    xx, yy = np.meshgrid(x, y)  # point k = row i * nx + column j, the grid's flat order
    points = np.stack([xx.ravel(), yy.ravel(), z.ravel()], axis=1)
    i, j = np.meshgrid(np.arange(ny - 1), np.arange(nx - 1), indexing="ij")
    corner = (i * nx + j).ravel()
    quads = np.stack([corner, corner + 1, corner + nx + 1, corner + nx], axis=1)

    def numbers(a: np.ndarray, fmt: str) -> str:
        return "\n".join(" ".join(fmt % v for v in row) for row in np.atleast_2d(a))

    name = html.escape(metric + ("_log" if log else ""), quote=True)
    text = f"""<?xml version="1.0"?>
<VTKFile type="PolyData" version="0.1" byte_order="LittleEndian">
  <PolyData>
    <Piece NumberOfPoints="{len(points)}" NumberOfVerts="0" NumberOfLines="0" NumberOfStrips="0" \
NumberOfPolys="{len(quads)}">
      <PointData Scalars="{name}">
        <DataArray type="Float32" Name="{name}" NumberOfComponents="1" format="ascii">
{numbers(z.reshape(1, -1), "%.7g")}
        </DataArray>
      </PointData>
      <Points>
        <DataArray type="Float32" Name="Points" NumberOfComponents="3" format="ascii">
{numbers(points, "%.7g")}
        </DataArray>
      </Points>
      <Polys>
        <DataArray type="Int64" Name="connectivity" format="ascii">
{numbers(quads, "%d")}
        </DataArray>
        <DataArray type="Int64" Name="offsets" format="ascii">
{numbers((np.arange(len(quads)) * 4 + 4).reshape(1, -1), "%d")}
        </DataArray>
      </Polys>
    </Piece>
  </PolyData>
</VTKFile>
"""
    write_text(path, text)
    return path


def _check_2d(s: Surface, metric: str) -> None:
    if s.y is None:
        raise UserError("a 1D curve has no surface to export; give a 2D surface file (plot2d or trajectory)")
    if metric not in s.values:
        raise UserError(f"no metric {metric!r} in this surface; it has {', '.join(s.values)}")


def _at(s: Surface, z: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Values of z (len(y), len(x)) at (alpha, beta) points, linearly interpolated (clamped to the grid)."""
    from scipy.interpolate import RegularGridInterpolator

    assert s.y is not None
    pts = np.stack([np.clip(coords[:, 1], s.y[0], s.y[-1]), np.clip(coords[:, 0], s.x[0], s.x[-1])], axis=1)
    return RegularGridInterpolator((s.y, s.x), z)(pts)


def surface_levels(s: Surface, n: int | None = None, loss_max: float | None = None,
                   given: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Each metric's evenly spaced contour levels, those `given` first: a loss's from artists.loss_levels (Li et
    al.'s 0.1 to 10 by 0.5 unless `n` or `loss_max` is given), any other metric's n (default 20) over its range.
    The PNG figures (output.render) and the HTML page draw the same ones."""
    losses, given = s.loss_metrics(), given or {}
    return {m: np.asarray(given[m]) if m in given else loss_levels(z, n, loss_max) if m in losses else
            levels_for(z, n or 20) for m, z in s.values.items()}


def html_figure(s: Surface, title: str = "", loss_max: float | None = None,
                levels: Mapping[str, np.ndarray] | None = None) -> Any:
    """A plotly Figure of the surface: one 3D surface per metric (a menu picks which one shows), contour lines
    projected below at surface_levels (those `levels` gives first; a loss is drawn flat above its top level), hover
    values, and the file's markers (path or points) on the surface."""
    import plotly.graph_objects as go

    assert s.y is not None
    xlabel, ylabel = s.axis_names()
    fig, buttons, per_metric = go.Figure(), [], []
    drawn = surface_levels(s, loss_max=loss_max, given=levels)
    for metric, values in s.values.items():
        lv = drawn[metric]
        vmax = float(lv[-1]) if metric in s.loss_metrics() else None
        z = capped(np.asarray(values, float), s.done, vmax)  # a flat cap at vmax, diverged points included
        z = np.where(np.isfinite(z), z, np.nan)
        contours = {"show": True, "project_z": True, "usecolormap": True, "start": float(lv[0]),
                    "end": float(lv[-1]), "size": float(lv[1] - lv[0]) if len(lv) > 1 else 1.0}
        traces = [go.Surface(x=s.x, y=s.y, z=z, name=metric, colorscale="Viridis", colorbar={"title": metric},
                             contours_z=contours,
                             hovertemplate=f"{xlabel}=%{{x:.4g}}<br>{ylabel}=%{{y:.4g}}<br>{metric}=%{{z:.5g}}"
                                           "<extra></extra>")]
        m = s.annotations.markers
        if m is not None and np.isfinite(z).any():
            filled = np.where(np.isfinite(z), z, np.nanmax(z))
            mode = "lines+markers+text" if m.kind == "path" else "markers+text"
            text = [n if m.kind != "path" or i % max(1, len(m.names) // 10) == 0 or i == len(m.names) - 1 else ""
                    for i, n in enumerate(m.names)]
            traces.append(go.Scatter3d(x=m.coords[:, 0], y=m.coords[:, 1], z=_at(s, filled, m.coords), mode=mode,
                                       text=text, hovertext=list(m.names), hoverinfo="text", name=m.kind,
                                       marker={"size": 3 if m.kind == "path" else 6, "color": "red"},
                                       line={"color": "red", "width": 4}, textfont={"color": "red"}))
        per_metric.append(len(traces))
        for t in traces:
            fig.add_trace(t)
    start = 0
    for metric, n in zip(s.values, per_metric):
        visible = [start <= k < start + n for k in range(sum(per_metric))]
        buttons.append({"label": metric, "method": "update", "args": [{"visible": visible}]})
        start += n
    for k, trace in enumerate(fig.data):
        trace.visible = k < per_metric[0]
    fig.update_layout(title={"text": title, "x": 0.5, "xanchor": "center"},
                      scene={"xaxis_title": xlabel, "yaxis_title": ylabel, "zaxis_title": "value"},
                      updatemenus=[{"buttons": buttons, "x": 0.0, "y": 1.08, "xanchor": "left"}],
                      margin={"l": 0, "r": 0, "t": 60, "b": 0})
    return fig


def write_html(s: Surface, path: str, title: str = "", loss_max: float | None = None,
               levels: Mapping[str, np.ndarray] | None = None) -> str:
    """One self-contained page (plotly's JavaScript embedded: it works offline), written atomically; `levels`:
    html_figure's."""
    _check_2d(s, next(iter(s.values)))
    fig = html_figure(s, title, loss_max, levels)
    with atomic_path(path) as tmp:
        fig.write_html(tmp, include_plotlyjs=True, full_html=True, config={"displaylogo": False},
                       default_width="100%", default_height="95vh")
    return path
