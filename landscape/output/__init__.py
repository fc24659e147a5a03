"""Drawing and export: a surface or curve file (or one in memory) to its figure files (render: PNG, PDF, SVG
through the pure plot functions of landscape.drawing) and to other viewers' formats (viewers: ParaView's VTP, a
self-contained interactive HTML page). Reads files of the surface core; computes nothing."""

from landscape.base.lazy import lazy_exports

_API = {
    "render_1d": "render", "render_2d": "render", "render_hessian_map": "render", "render_curve": "render",
    "write_vtp": "viewers", "write_html": "viewers",
}
__all__ = sorted(_API)
__getattr__, __dir__ = lazy_exports(__name__, _API)
