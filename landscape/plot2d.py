"""2D loss surface around a checkpoint along two filter-normalized random directions, rendered as the paper's
contour plots (contour lines, filled contours, heatmap, 3D) for loss and accuracy, PNG and PDF.

  python -m landscape.plot2d runs/a/last.pt --x=-1:1:51 --y=-1:1:51 --out plots
  torchrun --standalone --nproc_per_node=4 -m landscape.plot2d runs/a/last.pt --x=-1:1:51 --y=-1:1:51 --out plots
  python -m landscape.plot2d plots/a_last_2d.h5            # re-plot a finished (or partial) file

Rerunning the same command resumes: only the points not yet in the .h5 file are computed.
"""

from __future__ import annotations

from collections.abc import Sequence

from landscape import cliargs, render
from landscape.cli import ArgumentParser, add_renamed_flag, config_from_args, run_cli
from landscape.config import AXIS, PlotConfig, SurfaceConfig
from landscape.errors import UserError
from landscape.io import read_surface


def get_parser(add_help: bool = True) -> ArgumentParser:
    p = cliargs.get_parser("python -m landscape.plot2d", __doc__, add_help, skip=("log",))
    p.add_argument("source", help="a checkpoint (.pt) to compute from, or a surface file (.h5) to re-plot")
    p.set_defaults(y=AXIS)  # a 2D command: the beta axis like the alpha one
    add_renamed_flag(p, "--vmax", "--loss-max", "loss_max", type=float)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = get_parser().parse_args(argv)
    plot = config_from_args(PlotConfig, args)
    path, report = args.source, f"re-plotted {args.source}"
    if not path.endswith(".h5"):
        done = cliargs.compute([config_from_args(SurfaceConfig, args, checkpoint=path)])
        if done is None:  # not rank 0: rank 0 alone plots
            return
        (path, report), = done
    surface = read_surface(path)
    if not surface.is_2d:
        raise UserError(f"{path} holds a 1D curve; plot it with python -m landscape.plot1d {path}")
    stem = cliargs.figure_stem(path)
    files = render.render_2d(surface, stem, plot)
    print(f"{report}; {len(files)} figures {stem}_*.{{{','.join(plot.formats)}}} "
          f"({100 * render.done_fraction(surface):.0f}% of points done)", flush=True)


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
