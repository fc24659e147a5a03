"""Flags shared by `landscape.plot1d` and `landscape.plot2d`, turned into a SurfaceConfig."""

from __future__ import annotations

import argparse
import time
from typing import Any

from landscape.distributed import DistInfo
from landscape.runner import SurfaceConfig, check_output_folder, run_surface


def add_surface_args(p: argparse.ArgumentParser) -> None:
    d = SurfaceConfig(checkpoint="")
    g = p.add_argument_group("directions")
    g.add_argument("--dir-type", choices=["weights", "states"], default=None,
                   help="perturb parameters only, or the whole state including BatchNorm running statistics "
                   "(default: weights; states for an interpolation between two checkpoints)")
    g.add_argument("--norm", default=d.norm, help="filter, layer, weight or none")
    g.add_argument("--ignore", default=d.ignore, help="biasbn: zero the direction on 1-D tensors; none: keep them")
    g.add_argument("--seed", type=int, default=d.seed, help="seed of the random directions")
    g.add_argument("--orthogonal", action="store_true", help="make d2 orthogonal to d1 (after normalization)")
    g.add_argument("--directions", dest="directions_file", default=None,
                   help="reuse the directions of this surface or direction file (.h5)")
    g = p.add_argument_group("evaluation")
    g.add_argument("--splits", nargs="+", default=list(d.splits), help="train, test or both")
    g.add_argument("--samples", type=int, default=None, help="a fixed subset of N samples per split (default: all)")
    g.add_argument("--loss", default=d.loss, help="cross_entropy or mse")
    g.add_argument("--batch-size", type=int, default=None, help="evaluation batch (default 256 on CPU, 1024 on CUDA)")
    g.add_argument("--precision", choices=["fp32", "bf16"], default=d.precision,
                   help="bf16 autocast is faster on GPUs; fp32 is what the stored numbers default to")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default=d.device)
    g.add_argument("--data-dir", default=None,
                   help="folder of torchvision datasets (default $LANDSCAPE_DATA or ./data)")
    g.add_argument("--download", action="store_true", help="let torchvision download a missing dataset")
    g.add_argument("--compile", action="store_true", help="torch.compile the model (pays off on large grids)")
    g.add_argument("--points-per-pass", type=int, default=d.points_per_pass, metavar="K",
                   help="evaluate K grid points per forward pass with torch.func.vmap; pays for small models "
                   "on a GPU, not on a CPU")
    g.add_argument("--flush-seconds", type=float, default=d.flush_seconds,
                   help="about how much work may be in flight between two flushes of the HDF5 file")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("output")
    g.add_argument("--out", default=d.out, help="folder for the .h5 surface and the figures")
    g.add_argument("--name", default=None, help="file stem (default: from the checkpoint's folder and name)")
    g.add_argument("--formats", nargs="+", default=["png", "pdf"], help="figure formats")


def surface_config(args: argparse.Namespace, checkpoint: str, **overrides: Any) -> SurfaceConfig:
    d = SurfaceConfig(checkpoint="")
    fields = dict(checkpoint=checkpoint, out=args.out, x=args.x, y=getattr(args, "y", None),
                  directions_file=args.directions_file, dir_type=args.dir_type or d.dir_type, norm=args.norm,
                  ignore=args.ignore,
                  seed=args.seed, orthogonal=args.orthogonal, splits=tuple(args.splits), samples=args.samples,
                  loss=args.loss, batch_size=args.batch_size, precision=args.precision, device=args.device,
                  data_dir=args.data_dir, download=args.download, compile=args.compile,
                  points_per_pass=args.points_per_pass,
                  flush_seconds=args.flush_seconds, progress=not args.no_progress, name=args.name)
    fields.update(overrides)
    return SurfaceConfig(**fields)


def compute(cfg: SurfaceConfig, info: DistInfo) -> tuple[str, str]:
    """run_surface, timed: the file's path and a one-line summary for the CLI to print."""
    check_output_folder(cfg.out, info)
    t0 = time.perf_counter()
    run = run_surface(cfg, info)
    procs = f" on {info.world_size} processes" if info.is_distributed else ""
    return run.path, (f"computed {run.computed} of {run.total} points ({run.already_done} already done) "
                      f"in {time.perf_counter() - t0:.1f}s{procs} -> {run.path}")
