"""The surface core: weights as named tensors, random directions and their normalization, trajectory PCA,
grid evaluation (resumable, split across ranks) and the HDF5 surface file."""

from landscape.base.lazy import lazy_exports

_API = {
    "Params": "params", "model_tensors": "params", "snapshot": "params", "norm": "params", "dot": "params",
    "DirectionSpec": "directions", "create_random_directions": "directions", "normalize_direction": "directions",
    "orthogonalize": "directions", "target_direction": "directions", "plane_through": "directions",
    "output_axes": "directions",
    "trajectory_pca": "pca",
    "EvalSet": "grid_eval", "PointEvaluator": "grid_eval", "compute_surface": "grid_eval", "Evaluator": "grid_eval",
    "Sink": "grid_eval",
    "Surface": "surface_file", "Origin": "surface_file", "Annotations": "surface_file", "Markers": "surface_file",
    "read_surface": "surface_file", "read_directions": "surface_file", "save_directions": "surface_file",
    "SurfaceSink": "surface_file", "SurfaceWriter": "surface_file", "open_surface": "surface_file",
    "Curve": "curve_file", "read_curve": "curve_file", "tensors_sha256": "fingerprint",
}
__all__ = sorted(_API)
__getattr__, __dir__ = lazy_exports(__name__, _API)
