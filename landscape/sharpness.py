"""Sharpness of a minimum as numbers, in one table: Hessian extremes (Lanczos), trace (Hutch++), eigenvalue
density (SLQ), Keskar's epsilon-sharpness, adaptive worst-case and average-case sharpness, and the basin width
over random directions with its standard error; for the chosen parameters and, with --per-layer, each layer.

  python -m landscape.sharpness runs/a/last.pt --samples 2000 --out plots
  python -m landscape.sharpness runs/a/last.pt --measures lambda_max trace --per-layer
  python -m landscape.sharpness runs/a/last.pt --measures density      # also draws OUT/<name>_density.png
  torchrun --standalone --nproc_per_node=4 -m landscape.sharpness runs/a/last.pt --out plots

Writes OUT/<name>_sharpness.csv and .json beside the checkpoint's surfaces; a rerun of the same request reuses
the JSON. The data is the first of --splits (default: train), split across processes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from landscape.base import config as c
from landscape.base.config import SurfaceConfig
from landscape.base.flags import ArgumentParser, DefaultsFormatter, add_config_args, config_from_args, run_cli

PIECES = (*c.EVALUATION_PIECES, c.SplitsFlags, c.SubsetFlags, c.RandomFlags)


def get_parser(add_help: bool = True) -> ArgumentParser:
    from landscape.pipelines.sharpness_table import SharpnessConfig  # the measures' registry, filled

    p = ArgumentParser(prog="python -m landscape.sharpness", description=__doc__, formatter_class=DefaultsFormatter,
                       add_help=add_help)
    p.add_argument("checkpoint", help="the checkpoint (ours; with --model a weights file: .pt, .pth, .ckpt, "
                   ".safetensors; or a HuggingFace save_pretrained folder)")
    for piece in (*PIECES, SharpnessConfig):
        add_config_args(p, piece)
    p.set_defaults(splits=["train"])  # the data measured: the first split given
    return p


def main(argv: Sequence[str] | None = None) -> None:
    from landscape.base.flags import check_writable
    from landscape.output import render
    from landscape.pipelines.sharpness_table import (
        SharpnessConfig,
        density_curve,
        paths_for,
        run_sharpness,
        table_text,
    )
    from landscape.runtime.distributed import exclusive_output, process_group

    args = get_parser().parse_args(argv)
    cfg = config_from_args(SurfaceConfig, args, checkpoint=args.checkpoint)
    sc = config_from_args(SharpnessConfig, args)
    stem = os.path.splitext(os.path.basename(paths_for(cfg)[0]))[0]
    with process_group(cfg.device) as info, exclusive_output(cfg.out, info, stem=stem):  # one writer per table
        t0 = time.perf_counter()
        run = run_sharpness(cfg, sc, info)
    if not info.is_main:
        return
    how = "reused" if run.reused else f"measured in {time.perf_counter() - t0:.1f}s"
    print(f"{table_text(run.rows)}\n{how} -> {run.csv}, {run.json}", flush=True)
    if run.density:
        check_writable(cfg.out)
        sigma = density_curve(next(iter(run.density.values())))[2]  # the whole set's width, for every curve
        curves = [(label, *density_curve(d, width=sigma)[:2]) for label, d in run.density.items()]
        files = render.render_density(curves, sigma, run.csv[:-len("_sharpness.csv")] + "_density")
        print(f"density: {', '.join(files)}", flush=True)


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
