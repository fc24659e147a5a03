"""Sharpness of a checkpoint as numbers: lambda_max/lambda_min (Lanczos), Hutchinson trace, computed on the same
evaluation data as its surfaces, with the data split across ranks; cached as JSON so figure scripts resume."""

from __future__ import annotations

from typing import Any

from landscape.checkpoint import file_sha256, load_data_for, load_model
from landscape.distributed import DistInfo, run_on_main
from landscape.engine import select_samples
from landscape.files import read_cached, write_cached
from landscape.hessian import HessianOperator, eigenvalues, hutchinson_trace


def measure_sharpness(checkpoint: str, info: DistInfo, split: str = "train", samples: int | None = None,
                      k: int = 1, trace_samples: int = 50, batch_size: int = 1024, seed: int = 0,
                      cache: str | None = None) -> dict[str, Any]:
    """Hessian spectrum ends and trace of the mean loss on `split` (a fixed subset of `samples` if given)."""
    key = {"checkpoint_sha256": file_sha256(checkpoint), "split": split, "samples": samples, "k": k,
           "trace_samples": trace_samples, "seed": seed}
    cached = read_cached(cache, key) if cache else None
    if cached is not None:
        return cached
    model, ckpt = load_model(checkpoint)
    x, y = select_samples(*load_data_for(ckpt).split(split), samples, split)
    shard = slice(info.rank, None, info.world_size)
    op = HessianOperator(model.to(info.device), x[shard].to(info.device), y[shard].to(info.device), batch_size)
    eig = eigenvalues(op, k=k, seed=seed)
    tr = hutchinson_trace(op, trace_samples, seed=seed)
    result = {"lambda_max": eig.top[0], "lambda_min": eig.min, "lambda_min_converged": eig.min_converged,
              "trace": tr.estimate, "trace_stderr": tr.stderr}
    if cache:
        run_on_main(lambda: write_cached(cache, key, result), info)
    return result
