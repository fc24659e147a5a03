"""The grid of a surface: axes written 'MIN:MAX:NUM', and the one order in which its points are numbered.

A 2D surface is laid out as the reference implementation and matplotlib read it: row i holds y[i] and column j
holds x[j], shape (len(y), len(x)), so `contour(x, y, z)` draws it as computed. Flat point k is row k // nx,
column k % nx (C order), both in the engine's numbering and in the file's arrays. A 1D curve has shape (len(x),).
"""

from __future__ import annotations

import math
import re

import numpy as np

from landscape.base.errors import ConfigError

_RANGE = re.compile(r"^\s*([-+0-9.eE]+)\s*:\s*([-+0-9.eE]+)\s*:\s*(\d+)\s*$")


def parse_range(spec: str, flag: str = "--x") -> np.ndarray:
    """'MIN:MAX:NUM' (the reference implementation's syntax) -> NUM evenly spaced values, MIN < MAX, NUM >= 2."""
    m = _RANGE.match(spec)
    if not m:
        raise ConfigError(f"{flag}={spec!r} is not MIN:MAX:NUM; write e.g. {flag}=-1:1:51")
    try:
        lo, hi, num = float(m.group(1)), float(m.group(2)), int(m.group(3))
    except ValueError:
        raise ConfigError(f"{flag}={spec!r} is not MIN:MAX:NUM with numbers; write e.g. {flag}=-1:1:51") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ConfigError(f"{flag}={spec!r}: MIN and MAX must be finite numbers")
    if num < 2:
        raise ConfigError(f"{flag}={spec!r}: NUM must be at least 2; write e.g. {flag}={lo:g}:{hi:g}:51")
    if lo >= hi:
        raise ConfigError(f"{flag}={spec!r}: MIN must be below MAX; write e.g. "
                          f"{flag}={min(lo, hi):g}:{max(lo, hi):g}:{num}")
    return np.linspace(lo, hi, num)


def grid_shape(x: np.ndarray, y: np.ndarray | None) -> tuple[int, ...]:
    """(len(y), len(x)) for a surface, (len(x),) for a curve."""
    return (len(x),) if y is None else (len(y), len(x))


def grid_points(x: np.ndarray, y: np.ndarray | None) -> np.ndarray:
    """The (alpha,) or (alpha, beta) coordinates of every point in flat order: shape (P, 1) or (P, 2)."""
    if y is None:
        return x.reshape(-1, 1)
    xx, yy = np.meshgrid(x, y)  # both (len(y), len(x)): row = y
    return np.stack([xx.ravel(), yy.ravel()], axis=1)


def covering_axis(values: np.ndarray, num: int, margin: float = 0.25, include_zero: bool = True) -> np.ndarray:
    """num evenly spaced values over [min, max] of `values` (and 0), widened by `margin` of the span each side."""
    v = np.append(np.asarray(values, float), 0.0) if include_zero else np.asarray(values, float)
    lo, hi = float(v.min()), float(v.max())
    span = hi - lo if hi > lo else 1.0
    return np.linspace(lo - margin * span, hi + margin * span, num)


def snap_axis(axis: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """`axis` with its nearest value replaced by each of `values` that lies within its range, so those values
    are grid points (their loss is computed, not interpolated); returns the new axis (still increasing) and the
    values left out because they lie outside it. Two values never take the same grid point."""
    out, outside = np.array(axis, float), []
    taken: set[int] = set()
    for v in sorted(set(map(float, values))):
        if not out[0] <= v <= out[-1]:
            outside.append(v)
            continue
        order = [int(i) for i in np.argsort(np.abs(out - v)) if int(i) not in taken]
        i = order[0]
        out[i] = v
        taken.add(i)
    if np.any(np.diff(out) <= 0):
        raise ConfigError(f"the axis has too few points to hold {sorted(set(map(float, values)))} apart; "
                          "give it more points")
    return out, outside
