"""landscape: filter-normalized random directions and 1D/2D loss surfaces around a trained network.

The importable core: `directions` (sampling, normalization), `surface` (grid evaluation, resumable),
`io` (the HDF5 schema), `plot` (pure plotting functions) and `hessian` (sharpness by Lanczos/Hutchinson).
"""

__version__ = "0.2.0"
