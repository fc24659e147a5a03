"""A surface file for other viewers: VTK PolyData for ParaView (--vtp), or one self-contained interactive 3D page
(--html) that can be turned, zoomed and hovered, and works offline.

  python -m landscape.export plots/a_last_2d.h5 --vtp --log --zmax 10      # -> plots/a_last_2d_train_loss_log.vtp
  python -m landscape.export plots/a_last_2d.h5 --vtp --metric test_loss --interp 200
  python -m landscape.export plots/run_epoch_0040_trajectory.h5 --html     # the path drawn on the surface

plot2d and trajectory already write the page beside their figures (--formats png pdf html).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from landscape.base.errors import UserError
from landscape.base.flags import ArgumentParser, DefaultsFormatter, check_writable, run_cli
from landscape.core.surface_file import read_surface
from landscape.output import render, viewers


def get_parser(add_help: bool = True) -> ArgumentParser:
    p = ArgumentParser(prog="python -m landscape.export", description=__doc__, formatter_class=DefaultsFormatter,
                       add_help=add_help)
    p.add_argument("source", help="a 2D surface file (.h5) of plot2d or trajectory")
    p.add_argument("--vtp", action="store_true", help="write VTK XML PolyData for ParaView")
    p.add_argument("--html", action="store_true", help="write one self-contained interactive 3D page")
    p.add_argument("--metric", default=None, help="the .vtp's metric (default: the first loss in the file)")
    p.add_argument("--log", action="store_true", help=f".vtp: draw ln(value + {viewers.LOG_OFFSET:g})")
    p.add_argument("--zmin", type=float, default=None, help=".vtp: clip values below")
    p.add_argument("--zmax", type=float, default=None, help=".vtp: clip values above (also where not computed)")
    p.add_argument("--interp", type=int, default=None, metavar="N", help=".vtp: resample to N x N points (cubic)")
    p.add_argument("--loss-max", type=float, default=None, help="html: clip the loss at this value")
    p.add_argument("--out", default=None, metavar="STEM", help="output stem (default: the .h5 file's)")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = get_parser().parse_args(argv)
    check_args(args)
    s = read_surface(args.source)
    if not s.is_2d:
        raise UserError(f"{args.source} holds a 1D curve; export a 2D surface (plot2d or trajectory)")
    stem = args.out or os.path.splitext(args.source)[0]
    check_writable(os.path.dirname(stem) or ".")
    metric = args.metric or s.loss_metrics()[0]
    written = []
    if args.vtp:
        written.append(viewers.write_vtp(s, f"{stem}_{metric}{'_log' if args.log else ''}.vtp", metric, log=args.log,
                                         zmin=args.zmin, zmax=args.zmax, interp=args.interp))
    if args.html:
        written.append(viewers.write_html(s, f"{stem}.html", render.describe(s), args.loss_max))
    print(f"wrote {', '.join(written)}", flush=True)


def check_args(args: argparse.Namespace) -> None:
    if not (args.vtp or args.html):
        raise UserError("say what to write: --vtp (ParaView), --html (interactive page), or both")
    if args.interp is not None and args.interp < 2:
        raise UserError(f"--interp must be >= 2 points, got {args.interp}")
    if args.zmin is not None and args.zmax is not None and args.zmin >= args.zmax:
        raise UserError(f"--zmin {args.zmin} must be below --zmax {args.zmax}")


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
