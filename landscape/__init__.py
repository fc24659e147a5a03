"""landscape: filter-normalized random directions and 1D/2D loss surfaces around a trained network.

Layers, bottom to top, each importing only those below it (tests/test_layers.py keeps it so):
foundation without torch (errors, files, grid, config, cli); runtime (distributed, evaluation); models, data and
checkpoints; the core (params, directions, surface, io, hessian, plot); pipelines (runner, sharpness, render);
the commands (plot1d, plot2d). `trainers` sits on top of these and is never imported by them.
"""

__version__ = "0.2.0"
