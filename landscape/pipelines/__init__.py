"""The pipelines: one builder of grid jobs (the front door of the commands, the Python API, the figure
scripts and the benchmarks), a checkpoint to its surface file, and the sharpness table with its
registered measures (figure files and viewers' formats are landscape.output's)."""

from landscape.base.lazy import lazy_exports

_API = {
    "GridJob": "grid_job", "grid_job": "grid_job", "evaluation_record": "grid_job", "run_grid": "grid_job",
    "SurfaceRun": "grid_job",
    "run_surface": "from_checkpoint", "run_hessian_map": "from_checkpoint", "job_from_config": "from_checkpoint",
    "Centre": "inputs", "load_centre": "inputs", "load_sets": "inputs",
    "make_directions": "chosen_directions",
    "run_sharpness": "sharpness_table", "measure_table": "sharpness_table", "SharpnessConfig": "sharpness_table",
    "Measure": "measure_registry", "register_measure": "measure_registry", "MEASURES": "measure_registry",
    "run_connect": "connect_job", "ConnectFiles": "connect_job", "evaluation_sets": "inputs",
    "evaluation_settings": "grid_job",
}
__all__ = sorted(_API)
__getattr__, __dir__ = lazy_exports(__name__, _API)
