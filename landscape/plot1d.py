"""1D loss curves: along a filter-normalized random direction, or the linear interpolation between two
checkpoints (1-alpha)*theta_A + alpha*theta_B; loss and accuracy on twin axes, train solid, test dashed.

  python -m landscape.plot1d runs/a/last.pt --x=-1:1:51 --out plots          # random direction
  python -m landscape.plot1d runs/a/last.pt runs/b/last.pt --out plots         # interpolation A -> B
  python -m landscape.plot1d runs/a/last.pt runs/b/last.pt --overlay --out plots   # both curves, one figure
  python -m landscape.plot1d plots/a_last_1d.h5 plots/b_last_1d.h5 --out plots     # re-plot, overlaid
  torchrun --standalone --nproc_per_node=2 -m landscape.plot1d runs/a/last.pt --out plots

With --overlay every checkpoint gets its own curve with the same settings (the top row of Li et al.'s Fig. 3).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from landscape.base import config as c
from landscape.base import figure_config as fc
from landscape.base.config import OUT, run_tag
from landscape.base.errors import UserError
from landscape.base.figure_config import PlotConfig
from landscape.base.flags import ArgumentParser, config_from_args, run_cli
from landscape.output import render
from landscape.pipelines import surface_commands

PIECES = (*c.EVALUATION_PIECES, c.SplitsFlags, c.BatchNormFlags, c.EvalRunFlags, c.SpeedFlags, c.SubsetFlags,
          c.RandomFlags, c.DirectionFlags, c.AlignFlags, c.XAxisFlags, c.AutoRiseFlags, fc.FigureFlags, fc.LogFlags)


def get_parser(add_help: bool = True) -> ArgumentParser:
    p = surface_commands.get_parser("python -m landscape.plot1d", __doc__, add_help, PIECES)
    p.add_argument("sources", nargs="+", help="checkpoints (.pt) to compute from and/or surface files (.h5)")
    p.add_argument("--overlay", action="store_true", help="with two checkpoints: a random-direction curve for "
                   "each, overlaid, instead of the interpolation between them")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = get_parser().parse_args(argv)
    plot = config_from_args(PlotConfig, args)
    ckpts = [s for s in args.sources if not s.endswith(".h5")]
    interp = len(args.sources) == 2 and len(ckpts) == 2 and not args.overlay
    pairs = [(ckpts[0], ckpts[1])] if interp else [(c, None) for c in ckpts]
    jobs = [surface_commands.surface_config(args, checkpoint=c, target=t) for c, t in pairs]
    paths = {s: s for s in args.sources if s.endswith(".h5")}
    computed = {}
    if jobs:
        done = surface_commands.compute(jobs)
        if done is None:  # not rank 0: rank 0 alone plots
            return
        for cfg, (path, surface, report) in zip(jobs, done):
            paths[cfg.checkpoint], computed[cfg.checkpoint] = path, surface
            print(report, flush=True)
    surfaces = []
    for src in ckpts[:1] if interp else args.sources:
        s = surface_commands.surface_of(src, computed)
        if s.is_2d:
            raise UserError(f"{paths[src]} holds a 2D surface; plot it with python -m landscape.plot2d {paths[src]}")
        label = "" if len(args.sources) == 1 or interp else (render.describe(s) or run_tag(src))
        surfaces.append((label, s))
    if interp:
        stem = surface_commands.figure_stem(paths[ckpts[0]])
        title = f"{run_tag(ckpts[0])} (alpha=0) -> {run_tag(ckpts[1])} (alpha=1)"
    elif len(surfaces) == 1:
        src = args.sources[0]
        replot = src.endswith(".h5")
        stem = (surface_commands.replot_stem(src, args.out, args.name) if replot
                else surface_commands.figure_stem(paths[src]))
        title = render.describe(surfaces[0][1])
    else:
        stem, title = surface_commands.figure_stem(os.path.join(args.out or OUT, args.name or "overlay_1d")), ""
    files = render.render_1d(surfaces, stem, plot, title)
    print(f"figures: {', '.join(files)}", flush=True)


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
