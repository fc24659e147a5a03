"""2D loss surface around a checkpoint along two filter-normalized random directions, rendered as the paper's
contour plots (contour lines, filled contours, heatmap, 3D) for loss and accuracy, PNG and PDF.

  python -m landscape.plot2d runs/a/last.pt --x=-1:1:51 --y=-1:1:51 --out plots
  torchrun --standalone --nproc_per_node=4 -m landscape.plot2d runs/a/last.pt --x=-1:1:51 --y=-1:1:51 --out plots
  python -m landscape.plot2d plots/a_last_2d.h5            # re-plot a finished (or partial) file

Rerunning the same command resumes: only the points not yet in the .h5 file are computed.
"""

from __future__ import annotations

from collections.abc import Sequence

from landscape.cli import ArgumentParser, DefaultsFormatter, run_cli
from landscape.cliargs import add_surface_args, compute, surface_config
from landscape.distributed import cleanup_distributed, init_distributed


def get_parser(add_help: bool = True) -> ArgumentParser:
    p = ArgumentParser(prog="python -m landscape.plot2d", description=__doc__, formatter_class=DefaultsFormatter,
                       add_help=add_help)
    p.add_argument("source", help="a checkpoint (.pt) to compute from, or a surface file (.h5) to re-plot")
    p.add_argument("--x", default="-1:1:51", help="alpha grid MIN:MAX:NUM")
    p.add_argument("--y", default="-1:1:51", help="beta grid MIN:MAX:NUM")
    p.add_argument("--vmax", type=float, default=None, help="clip loss levels at this value (default: max finite)")
    p.add_argument("--levels", type=int, default=20, help="number of contour levels")
    add_surface_args(p)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = get_parser().parse_args(argv)
    from landscape import render
    from landscape.io import read_surface

    path, report = args.source, f"re-plotted {args.source}"
    if not path.endswith(".h5"):
        cfg = surface_config(args, path)
        info = init_distributed(cfg.device)
        try:
            path, report = compute(cfg, info)
        finally:
            cleanup_distributed()
        if not info.is_main:
            return
    surface = read_surface(path)
    if not surface.is_2d:
        raise ValueError(f"{path} holds a 1D curve; plot it with python -m landscape.plot1d {path}")
    files = render.render_2d(surface, render.stem_for(path), render.describe(surface), args.vmax, args.levels,
                             args.formats)
    print(f"{report}; {len(files)} figures {render.stem_for(path)}_*.{{{','.join(args.formats)}}} "
          f"({100 * render.done_fraction(surface):.0f}% of points done)", flush=True)


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
