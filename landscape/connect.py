"""Are two minima connected? The straight line between checkpoints A and B, the line to B with its hidden units
aligned to A's (--align), and a trained low-loss curve (Garipov et al. 2018), each evaluated at --points values
of t on the train and test data, with their loss and error barriers.

  python -m landscape.connect runs/a/last.pt runs/b/last.pt --out connect                 # Bezier curve
  python -m landscape.connect runs/a/last.pt runs/b/last.pt --align --curve polychain --out connect
  python -m landscape.connect runs/a/last.pt runs/b/last.pt --align --curve none --out connect   # lines only
  python -m landscape.connect connect/a_last_to_b_last_connect.h5                          # re-plot
  torchrun --standalone --nproc_per_node=2 -m landscape.connect runs/a/last.pt runs/b/last.pt --out connect
  python -m landscape.plot2d runs/a/last.pt --plane connect/a_last_to_b_last_aligned.pt \\
      connect/a_last_to_b_last_bend.pt --out connect     # the plane holding the curve, the curve drawn on it

Writes OUT/NAME_connect.h5 (every path's values, the bend, the permutations), NAME_bend.pt, NAME_aligned.pt,
and NAME_connect.{png,pdf}: train loss and test error along t; the barriers go to the titles and the output.
A killed run resumes when the same command is run again.
"""

from __future__ import annotations

from collections.abc import Sequence

from landscape.base import config as c
from landscape.base import curve_config as cc
from landscape.base import figure_config as fc
from landscape.base.config import OUT, SurfaceConfig
from landscape.base.curve_config import CurveConfig
from landscape.base.errors import UserError
from landscape.base.figure_config import PlotConfig
from landscape.base.flags import ArgumentParser, config_from_args, run_cli
from landscape.pipelines import surface_commands

PIECES = (*c.EVALUATION_PIECES, c.SplitsFlags, c.BatchNormFlags, c.EvalRunFlags, c.AlignFlags, fc.FigureFlags,
          fc.LogFlags, cc.CurveConfig)


def get_parser(add_help: bool = True) -> ArgumentParser:
    p = surface_commands.get_parser("python -m landscape.connect", __doc__, add_help, PIECES)
    p.add_argument("sources", nargs="+", metavar="A B | FILE.h5",
                   help="two checkpoints to join, or a curve file (.h5) to re-plot")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = get_parser().parse_args(argv)
    plot = config_from_args(PlotConfig, args)
    if len(args.sources) == 1 and args.sources[0].endswith(".h5"):
        from landscape.core.curve_file import read_curve
        from landscape.output.render import render_curve

        path = args.sources[0]
        curve = read_curve(path)
        stem = surface_commands.replot_stem(path, args.out, args.name)
        print(f"figures: {', '.join(render_curve(curve, stem, plot))}", flush=True)
        return
    if len(args.sources) != 2 or any(s.endswith(".h5") for s in args.sources):
        raise UserError(f"connect takes two checkpoints (A B) or one curve file (.h5), got {len(args.sources)} "
                        "arguments")
    cfg = config_from_args(SurfaceConfig, args, checkpoint=args.sources[0], target=args.sources[1],
                           out=args.out or OUT)
    curve_cfg = config_from_args(CurveConfig, args)
    from landscape.output.render import render_curve
    from landscape.pipelines.connect_job import connect_report, run_connect
    from landscape.runtime.distributed import process_group

    with process_group(cfg.device) as info:
        run = run_connect(cfg, curve_cfg, info)
    if run.curve is None:  # not rank 0
        return
    print(connect_report(run), flush=True)
    stem = run.files.curve[:-len(".h5")]
    print(f"figures: {', '.join(render_curve(run.curve, stem, plot))}", flush=True)


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
