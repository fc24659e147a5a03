"""Drawing, without torch: pure plot functions. Arrays and a matplotlib Axes in, the artist out; no file I/O, no
savefig, no pyplot state. Figure files are made from them by landscape.output.render."""

from landscape.base.lazy import lazy_exports

_API = {name: "artists" for name in ("contour", "contourf", "heatmap", "surface3d", "markers", "curve_1d",
                                     "plot_surface", "density_lines", "capped", "levels_for",
                                     "loss_levels", "sparse_ticks")}
__all__ = sorted(_API)
__getattr__, __dir__ = lazy_exports(__name__, _API)
