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

from landscape.cli import ArgumentParser, DefaultsFormatter, run_cli
from landscape.cliargs import add_surface_args, compute, surface_config
from landscape.distributed import cleanup_distributed, init_distributed


def get_parser(add_help: bool = True) -> ArgumentParser:
    p = ArgumentParser(prog="python -m landscape.plot1d", description=__doc__, formatter_class=DefaultsFormatter,
                       add_help=add_help)
    p.add_argument("sources", nargs="+", help="checkpoints (.pt) to compute from and/or surface files (.h5)")
    p.add_argument("--x", default=None, help="alpha grid MIN:MAX:NUM (default -1:1:51, or -0.5:1.5:41 for an "
                   "interpolation)")
    p.add_argument("--overlay", action="store_true", help="with two checkpoints: a random-direction curve for "
                   "each, overlaid, instead of the interpolation between them")
    p.add_argument("--log", action="store_true", help="log scale for the loss")
    p.add_argument("--loss-max", type=float, default=None, help="upper limit of the loss axis")
    p.add_argument("--title", default=None, help="figure title")
    add_surface_args(p)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = get_parser().parse_args(argv)
    from landscape import render
    from landscape.io import read_surface
    from landscape.runner import run_tag

    ckpts = [s for s in args.sources if not s.endswith(".h5")]
    interp = len(args.sources) == 2 and len(ckpts) == 2 and not args.overlay
    x = args.x or ("-0.5:1.5:41" if interp else "-1:1:51")
    # Interpolating BatchNorm networks needs their running statistics too, or alpha=1 would not be model B.
    if interp:
        jobs = [surface_config(args, ckpts[0], x=x, target=ckpts[1], y=None, dir_type=args.dir_type or "states")]
    else:
        jobs = [surface_config(args, c, x=x, y=None) for c in ckpts]
    paths = {s: s for s in args.sources if s.endswith(".h5")}
    if jobs:
        info = init_distributed(jobs[0].device)
        try:
            for cfg in jobs:
                paths[cfg.checkpoint], report = compute(cfg, info)
                if info.is_main:
                    print(report, flush=True)
        finally:
            cleanup_distributed()
        if not info.is_main:
            return
    surfaces = []
    for src in args.sources if not interp else ckpts[:1]:
        s = read_surface(paths[src])
        if s.is_2d:
            raise ValueError(f"{paths[src]} holds a 2D surface; plot it with python -m landscape.plot2d {paths[src]}")
        label = "" if len(args.sources) == 1 or interp else (render.describe(s) or run_tag(src))
        surfaces.append((label, s))
    if interp:
        stem = render.stem_for(paths[ckpts[0]])
        title = args.title or f"{run_tag(ckpts[0])} (alpha=0) -> {run_tag(ckpts[1])} (alpha=1)"
    elif len(surfaces) == 1:
        stem, title = render.stem_for(paths[args.sources[0]]), args.title or render.describe(surfaces[0][1])
    else:
        stem, title = os.path.join(args.out, "overlay_1d"), args.title or ""
        os.makedirs(args.out, exist_ok=True)
    files = render.render_1d(surfaces, stem, args.log, args.loss_max, title, args.formats)
    print(f"figures: {', '.join(files)}", flush=True)


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
