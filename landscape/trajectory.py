"""The optimizer's path drawn on the plane of its checkpoints' two leading principal components, over the loss
surface of that plane (Li et al. 2018, Sec. 7 and Fig. 9); the axes say how much of the path's variance each
component explains.

  python -m trainers.train --out runs/a --save-every 1 ...        # epoch_0000.pt (initial weights) ... epoch_N.pt
  python -m landscape.trajectory runs/a --out plots               # a run folder: its epoch_*.pt, the last is final
  python -m landscape.trajectory runs/a/epoch_000{0,2,4,6,8}.pt --out plots   # chosen checkpoints, final last
  torchrun --standalone --nproc_per_node=4 -m landscape.trajectory runs/a --out plots

The directions are computed once, from a few checkpoints in memory at a time (landscape.core.pca); rerunning the same
command resumes the surface.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence

from landscape.base import config as c
from landscape.base import figure_config as fc
from landscape.base.errors import UserError
from landscape.base.figure_config import PlotConfig
from landscape.base.flags import ArgumentParser, config_from_args, run_cli
from landscape.output import render
from landscape.pipelines import surface_commands

PIECES = (*c.EVALUATION_PIECES, c.SplitsFlags, c.BatchNormFlags, c.EvalRunFlags, c.SpeedFlags, c.SubsetFlags,
          c.XAxisFlags, c.YAxisFlags, c.PlanePointsFlags, fc.FigureFlags, fc.LevelsFlags)


def get_parser(add_help: bool = True) -> ArgumentParser:
    p = surface_commands.get_parser("python -m landscape.trajectory", __doc__, add_help, PIECES)
    p.add_argument("sources", nargs="+", help="a run folder of trainers.train (its epoch_*.pt), or checkpoints in "
                   "training order, the final one last")
    return p


def checkpoints_of(sources: Sequence[str]) -> list[str]:
    """The checkpoints of a run in training order: a folder's epoch_*.pt files, or the files as given."""
    if len(sources) == 1 and os.path.isdir(sources[0]):
        found = sorted(glob.glob(os.path.join(sources[0], "epoch_*.pt")))
        if not found:
            raise UserError(f"{sources[0]} holds no epoch_*.pt checkpoints; train with --save-every 1 (or give the "
                            "checkpoint files)")
        return found
    for s in sources:
        if os.path.isdir(s):
            raise UserError(f"{s} is a folder; give one run folder alone, or checkpoint files")
    return list(sources)


def main(argv: Sequence[str] | None = None) -> None:
    args = get_parser().parse_args(argv)
    plot = config_from_args(PlotConfig, args)
    ckpts = checkpoints_of(args.sources)
    cfg = surface_commands.surface_config(args, checkpoint=ckpts[-1], trajectory=tuple(ckpts[:-1]))
    done = surface_commands.compute([cfg])
    if done is None:  # not rank 0: rank 0 alone plots
        return
    (path, surface, report), = done
    stem = surface_commands.figure_stem(path)
    files = render.render_2d(surface, stem, plot)
    print(f"{report}; {len(files)} figures {stem}_*.{{{','.join(plot.formats)}}}", flush=True)


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
