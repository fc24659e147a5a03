"""landscape: filter-normalized random directions and 1D/2D loss surfaces around a trained network, for any model,
data and metric.

    import landscape
    d = landscape.random_directions(model, n=2)
    s = landscape.surface(model, loader, d, x="-1:1:21", y="-1:1:21", out="surface.h5")
    s.plot("contour")

The names below are loaded on first use (importing `landscape` loads no torch, so re-plotting a file stays light).
The pieces below them are public too, each subpackage naming its own in `__all__`: base (foundation, no torch),
runtime, models, data, training, core (directions, grid evaluation, the HDF5 file), curvature, connectivity
(alignment, curves, barriers), monitoring (the Monitor), integrations (Lightning, HuggingFace), drawing, pipelines.
The README's "How the code is laid out" is their map; tests/test_layers.py keeps their imports one way.
"""

from landscape.base.lazy import lazy_exports

__version__ = "0.8.0"

_API = {"random_directions": "api", "direction_to": "api", "surface": "api", "save_figures": "api",
        "load_weights": "api", "align": "api", "connect_checkpoints": "api", "barriers": "api",
        "read_curve": "core.curve_file", "Surface": "core.surface_file", "read_surface": "core.surface_file",
        "read_directions": "core.surface_file", "save_directions": "core.surface_file",
        "metrics": "runtime.metrics", "Criterion": "runtime.metrics", "Monitor": "monitoring.monitor",
        "hessian": "api", "hessian_eigenvalues": "api", "sharpness_table": "api",
        "connect_models": "api"}
__all__ = sorted(_API)
__getattr__, __dir__ = lazy_exports(__name__, _API)
