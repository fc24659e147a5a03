"""2D loss surface around a checkpoint along two filter-normalized random directions, rendered as the paper's
contour plots (contour lines, filled contours, heatmap, 3D) for loss and accuracy, PNG and PDF.

  python -m landscape.plot2d runs/a/last.pt --x=-1:1:51 --y=-1:1:51 --out plots
  torchrun --standalone --nproc_per_node=4 -m landscape.plot2d runs/a/last.pt --x=-1:1:51 --y=-1:1:51 --out plots
  python -m landscape.plot2d plots/a_last_2d.h5            # re-plot a finished (or partial) file, beside it
  python -m landscape.plot2d plots/a_last_2d.h5 --loss-max 5 --out clipped --name a   # ... or in clipped/a_*
  python -m landscape.plot2d runs/a/last.pt --plane runs/b/last.pt runs/c/last.pt --bn-recalibrate 20 --edges
  python -m landscape.plot2d runs/a/last.pt --directions hessian    # along the Hessian's top two eigenvectors

Rerunning the same command resumes: only the points not yet in the .h5 file are computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

from landscape.base import config as c
from landscape.base import figure_config as fc
from landscape.base.config import AXIS, SurfaceConfig, run_tag
from landscape.base.errors import UserError
from landscape.base.figure_config import PlotConfig
from landscape.base.flags import ArgumentParser, config_from_args, run_cli
from landscape.core.surface_file import read_surface
from landscape.output import render
from landscape.pipelines import surface_commands

PIECES = (*c.EVALUATION_PIECES, c.SplitsFlags, c.BatchNormFlags, c.EvalRunFlags, c.SpeedFlags, c.SubsetFlags,
          c.RandomFlags, c.DirectionFlags, c.PlaneFlags, c.AlignFlags, c.XAxisFlags, c.YAxisFlags, c.AutoRiseFlags,
          c.PlanePointsFlags, fc.FigureFlags, fc.LevelsFlags)


def get_parser(add_help: bool = True) -> ArgumentParser:
    p = surface_commands.get_parser("python -m landscape.plot2d", __doc__, add_help, PIECES)
    p.add_argument("source", help="a checkpoint to compute from (ours; with --model a weights file: .pt, .pth, .ckpt, "
                   ".safetensors; or a HuggingFace save_pretrained folder), or a surface file (.h5) to re-plot")
    p.set_defaults(y=None)  # a 2D command: the beta axis like the alpha one, unless a plane finds its own
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = get_parser().parse_args(argv)
    plot = config_from_args(PlotConfig, args)
    path, report = args.source, f"re-plotted {args.source}"
    edges: list[SurfaceConfig] = []
    if path.endswith(".h5"):
        surface = read_surface(path)
    else:
        cfg = surface_commands.surface_config(args, checkpoint=path, y=args.y or (None if args.plane else AXIS))
        edges = edge_configs(cfg)
        done = surface_commands.compute([cfg, *edges])
        if done is None:  # not rank 0: rank 0 alone plots
            return
        (path, surface, report), *edge_runs = done
    if not surface.is_2d:
        raise UserError(f"{path} holds a 1D curve; plot it with python -m landscape.plot1d {path}")
    replot = path == args.source  # a .h5 given: its figures go where --out/--name say, else beside it
    stem = surface_commands.replot_stem(path, args.out, args.name) if replot else surface_commands.figure_stem(path)
    files = render.render_2d(surface, stem, plot)
    print(f"{report}; {len(files)} figures {stem}_*.{{{','.join(plot.formats)}}} "
          f"({100 * render.done_fraction(surface):.0f}% of points done)", flush=True)
    if edges:
        curves = [(f"{run_tag(e.checkpoint)} -> {run_tag(e.target)}", s) for e, (_, s, _) in zip(edges, edge_runs)]
        files = render.render_1d(curves, stem + "_edges", plot, "the plane's edges (0 -> 1)")
        print(f"edges: {', '.join(files)}", flush=True)

EDGE_AXIS = "0:1:21"


def edge_configs(cfg: SurfaceConfig) -> list[SurfaceConfig]:
    """With --edges, the 1D interpolations along the plane's three edges (EDGE_AXIS: from one checkpoint to the
    other), evaluated as the plane is."""
    if not cfg.edges:
        return []
    a, (b, c) = cfg.checkpoint, cfg.plane
    common = {k: v for k, v in asdict(cfg).items() if k not in ("checkpoint", "target", "plane", "edges", "x", "y",
                                                                 "name", "directions_file")}
    return [SurfaceConfig(checkpoint=p, target=q, x=EDGE_AXIS, **common) for p, q in [(a, b), (a, c), (b, c)]]


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
