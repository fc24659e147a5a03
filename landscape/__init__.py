"""landscape: filter-normalized random directions and 1D/2D loss surfaces around a trained network, for any model,
data and metric.

    import landscape
    d = landscape.random_directions(model, n=2)
    s = landscape.surface(model, loader, d, x="-1:1:21", y="-1:1:21", out="surface.h5")
    s.plot("contour")

The names below are loaded on first use (importing `landscape` loads no torch, so re-plotting a file stays light).
Layers, bottom to top, each importing only those below it (tests/test_layers.py keeps it so):
foundation without torch (errors, files, grid, config, cli); runtime (distributed, metrics, sources, evaluation);
models, data, weights files and checkpoints; the core (params, directions, pca, engine, io, hessian, costs,
plot); pipelines (runner, api, sharpness_table, exports, render); the commands (plot1d, plot2d, trajectory,
hessian_map, sharpness, export). `trainers` sits on top of these and is never imported by them.
"""

import importlib
from typing import Any

__version__ = "0.7.0"

# public name -> the module that defines it; resolved by name on first use
_API = {"random_directions": "landscape.api", "direction_to": "landscape.api", "surface": "landscape.api",
        "save_figures": "landscape.api", "load_weights": "landscape.api", "Surface": "landscape.io",
        "read_surface": "landscape.io", "read_directions": "landscape.io", "save_directions": "landscape.io",
        "metrics": "landscape.metrics", "Criterion": "landscape.metrics"}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'landscape' has no attribute {name!r}")
    module = importlib.import_module(_API[name])
    return module if name == module.__name__.rpartition(".")[2] else getattr(module, name)
