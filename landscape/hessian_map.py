"""Maps of the Hessian's extreme eigenvalues over a 2D grid (Li et al. 2018, Sec. 6 and Fig. 7): lambda_max and
lambda_min of the training loss at every point, drawn as |lambda_min / lambda_max| (blue: convex, yellow: strong
negative curvature), with the share of points where the surface is convex.

  python -m landscape.hessian_map runs/a/last.pt --x=-1:1:11 --y=-1:1:11 --samples 1000 --out plots
  torchrun --standalone --nproc_per_node=4 -m landscape.hessian_map runs/a/last.pt --x=-1:1:21 --y=-1:1:21 --out plots

The grid and directions are those of plot2d with the same flags (same --seed), and the file sits beside its
surface: OUT/<name>_2d_hessian.h5. Points are split across processes; rerunning resumes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import numpy as np

from landscape.base import config as c
from landscape.base import figure_config as fc
from landscape.base.figure_config import PlotConfig
from landscape.base.flags import ArgumentParser, config_from_args, run_cli
from landscape.output import render
from landscape.pipelines import surface_commands

PIECES = (*c.EVALUATION_PIECES, c.EvalRunFlags, c.SubsetFlags, c.RandomFlags, c.DirectionFlags, c.XAxisFlags,
          c.YAxisFlags, fc.FigureFlags)


def get_parser(add_help: bool = True) -> ArgumentParser:
    p = surface_commands.get_parser("python -m landscape.hessian_map", __doc__, add_help, PIECES)
    p.add_argument("checkpoint", help="the checkpoint (.pt) at the centre")
    p.add_argument("--tol", type=float, default=1e-3, help="Lanczos tolerance (relative to the eigenvalue)")
    p.add_argument("--curvature", choices=c.CURVATURES, default="hessian", help="the curvature whose extreme "
                   "eigenvalues are mapped: the Hessian, the generalized Gauss-Newton, the Monte-Carlo or the "
                   "empirical Fisher (positive semi-definite: their lambda_min is 0 up to --tol, so only the "
                   "Hessian's map shows negative curvature); the file is OUT/<name>_2d_<curvature>.h5")
    p.add_argument("--convex-slack", type=float, nargs="+", default=[0.01, 0.1], help="a point counts as convex "
                   "when lambda_min >= -SLACK * lambda_max; the share is printed for each SLACK")
    p.set_defaults(x="-1:1:11", y="-1:1:11", formats=["png", "pdf"])
    return p


def main(argv: Sequence[str] | None = None) -> None:
    from landscape.curvature.hessian import convexity_fraction
    from landscape.pipelines.from_checkpoint import run_hessian_map
    from landscape.runtime.distributed import exclusive_output, process_group

    args = get_parser().parse_args(argv)
    plot = config_from_args(PlotConfig, args)
    cfg = surface_commands.surface_config(args, checkpoint=args.checkpoint)
    stem = os.path.basename(cfg.path)[:-len(".h5")] + f"_{args.curvature}.h5"
    with process_group(cfg.device) as info, exclusive_output(cfg.out, info, stem=stem):  # one writer per map
        t0 = time.perf_counter()
        run = run_hessian_map(cfg, info, args.tol, share=False, curvature=args.curvature)
        seconds = time.perf_counter() - t0
    if not info.is_main:
        return
    s = run.surface
    stem = surface_commands.figure_stem(run.path)
    files = render.render_hessian_map(s, stem, plot)
    shares = [f"{100 * convexity_fraction(s.values['lambda_max'], s.values['lambda_min'], slack):.1f}% of the points "
              f"(lambda_min >= -{slack:g} lambda_max)" for slack in args.convex_slack]
    centre = tuple(int(np.argmin(np.abs(a))) for a in (s.y, s.x))
    print(f"computed {run.computed} of {run.total} points ({run.already_done} already done) in {seconds:.1f}s -> "
          f"{run.path}\ncentre: lambda_max {s.values['lambda_max'][centre]:.5g}, lambda_min "
          f"{s.values['lambda_min'][centre]:.5g}\nconvex at {', '.join(shares)}\nfigures: {', '.join(files)}",
          flush=True)


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
