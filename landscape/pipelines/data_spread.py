"""How sure the curvature estimates are about the data they were taken on: lambda_max and the trace over K disjoint
subsets of it (their spread: PyHessian's users saw top eigenvalues from 159 to 1587 over runs of 128 samples), and
on nested prefixes of it (n/8, n/4, n/2, n samples), to see whether the estimate has settled. Both are extra rows
of the sharpness table, for the first parameter subset, with the chosen curvature.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from landscape.base.errors import ConfigError
from landscape.curvature.hessian import trace_estimate
from landscape.pipelines.measure_registry import Row, SharpnessConfig, Subject
from landscape.runtime.sources import EveryNth, StreamSource, TensorSource

SPREAD = ("lambda_max", "trace")  # the measures the spread and the samples check are taken of
CHECK_FRACTIONS = (8, 4, 2, 1)  # the samples check's prefixes: n/8, n/4, n/2, n


def spread_parts(sc: SharpnessConfig, source: TensorSource | StreamSource) -> list[Any] | None:
    """The --data-subsets parts (None when not asked for), made before anything is measured so that a spread or
    samples check of no measure, or more subsets than the data has samples (batches, for a stream), is refused
    first."""
    if (sc.data_subsets or sc.samples_check) and not set(SPREAD) & set(sc.measures):
        flag = "--data-subsets" if sc.data_subsets else "--samples-check"
        raise ConfigError(f"{flag} reports lambda_max and the trace; add lambda_max or trace to --measures")
    return disjoint_parts(source, sc.data_subsets) if sc.data_subsets else None


def disjoint_parts(source: TensorSource | StreamSource, k: int) -> list[Any]:
    """k disjoint subsets of the data: consecutive slices of resident tensors (sizes differing by at most one), or
    every k-th batch of a stream. Refused, in one line, when the data has fewer samples (batches) than k."""
    if isinstance(source, TensorSource):
        if k > source.samples:
            raise ConfigError(f"--data-subsets {k} is more than the {source.samples} samples measured allow (each "
                              f"subset needs one); ask for at most {source.samples}, or measure more --samples")
        return [TensorSource(x, y, source.device, source.batch_size)
                for x, y in zip(torch.tensor_split(source.x, k), torch.tensor_split(source.y, k))]
    batches = sum(1 for _ in source)
    if k > batches:
        raise ConfigError(f"--data-subsets {k} is more than the {batches} batches of the streamed data allow (a "
                          f"stream is split by batches); ask for at most {batches}")
    return [EveryNth(source, j, k) for j in range(k)]


def nested_prefixes(source: TensorSource | StreamSource) -> list[tuple[int, Any]]:
    """(samples, data) for the first n/8, n/4, n/2 and n samples of resident tensors (the sizes that reach one
    sample), or the first batches of a stream in the same proportions."""
    if isinstance(source, TensorSource):
        sizes = sorted({max(1, source.samples // f) for f in CHECK_FRACTIONS})
        return [(m, TensorSource(source.x[:m], source.y[:m], source.device, source.batch_size)) for m in sizes]
    batches = sum(1 for _ in source)
    sizes = sorted({max(1, batches // f) for f in CHECK_FRACTIONS})
    return [(m, _FirstBatches(source, m)) for m in sizes]


class _FirstBatches:
    """The first n batches of a re-iterable, at every iteration."""

    def __init__(self, batches: Any, n: int):
        self.batches, self.n = batches, n

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(iter(self.batches), self.n)


def _estimates(s: Subject, data: Any, names: list[str], sc: SharpnessConfig) -> dict[str, float]:
    """lambda_max and the trace (those chosen) with the chosen curvature, on `data` in place of the subject's."""
    part = dataclasses.replace(s, source=data, held=None, eigen_of=None, densities={})
    found = {}
    if "lambda_max" in sc.measures:
        found["lambda_max"] = part.eigen(names, sc.tol)[0].top[0]
    if "trace" in sc.measures:
        found["trace"] = trace_estimate(part.hessian(names), sc.trace_products, s.spec.seed, part.budget).estimate
    part.release()
    return found


def spread_rows(s: Subject, label: str, names: list[str], sc: SharpnessConfig, parts: list[Any] | None,
                log: Callable[[str], None]) -> list[Row]:
    """Rows `<measure>_over_subsets` (on `parts`, spread_parts': mean over the K subsets, its standard error, and
    each value, the min and max in the settings) and `<measure>_vs_samples` (the estimate at each prefix), as asked;
    a line each to `log`."""
    rows: list[Row] = []
    if parts:
        values = [_estimates(s, p, names, sc) for p in parts]
        for m in values[0]:
            v = np.array([found[m] for found in values])
            stderr = float(v.std(ddof=1) / math.sqrt(len(v)))
            rows.append({"subset": label, "measure": f"{m}_over_subsets", "value": float(v.mean()),
                         "stderr": stderr, "bound": "",
                         "settings": {"subsets": len(v), "min": float(v.min()), "max": float(v.max()),
                                      "values": v.tolist(), "curvature": sc.curvature}})
            log(f"{m} over {len(v)} disjoint subsets: mean {v.mean():.5g} +- {stderr:.2g}, "
                f"min {v.min():.5g}, max {v.max():.5g} (max/min {v.max() / v.min():.3g})")
    if sc.samples_check:
        prefixes = nested_prefixes(s.source)
        values = [_estimates(s, p, names, sc) for _, p in prefixes]
        counts = [m for m, _ in prefixes]
        unit = "samples" if isinstance(s.source, TensorSource) else "batches"
        log(f"samples check ({unit}): " + "  ".join(f"{c:>10}" for c in counts))
        for m in values[0]:
            v = [found[m] for found in values]
            rows.append({"subset": label, "measure": f"{m}_vs_samples", "value": v[-1], "stderr": float("nan"),
                         "bound": "", "settings": {unit: counts, "values": v, "curvature": sc.curvature,
                                                   "last_change": abs(v[-1] - v[-2]) / abs(v[-1]) if len(v) > 1
                                                   and v[-1] else float("nan")}})
            log(f"{m:>24}: " + "  ".join(f"{x:>10.5g}" for x in v))
    return rows
