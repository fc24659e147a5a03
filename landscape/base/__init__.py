"""The foundation, without torch: error types, files written whole, the grid's axes, what a user asks for
(the config dataclasses) and the flags derived from it. Imports nothing of landscape above it."""

from landscape.base.lazy import lazy_exports

_API = {
    "UserError": "errors", "ConfigError": "errors", "UnknownNameError": "errors", "error_message": "errors",
    "atomic_path": "files", "write_text": "files", "write_json": "files", "write_csv": "files", "read_cached": "files",
    "write_cached": "files",
    "parse_range": "grid", "grid_shape": "grid", "grid_points": "grid",
    "SurfaceConfig": "config", "PlotConfig": "figure_config", "run_tag": "config",
    "CurveConfig": "curve_config", "DEVICES": "config", "HESSIAN": "config", "CURVATURES": "config",
    "ArgumentParser": "flags", "option": "flags", "add_config_args": "flags", "config_from_args": "flags",
    "run_cli": "flags", "DefaultsFormatter": "flags",
}
__all__ = sorted(_API)
__getattr__, __dir__ = lazy_exports(__name__, _API)
