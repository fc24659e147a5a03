"""What the surface commands (plot1d, plot2d, trajectory, hessian_map) share: their flags (from the pieces of
SurfaceConfig and PlotConfig each takes), their compute step, and where their figures go. Importing this loads no
torch, and the compute step loads it only when a surface is computed, so a re-plot of a .h5 file never does.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from landscape.base.config import SurfaceConfig, check_file_stem
from landscape.base.flags import ArgumentParser, DefaultsFormatter, add_config_args, check_writable, config_from_args
from landscape.core.surface_file import Surface, read_surface


def get_parser(prog: str, description: str | None, add_help: bool, pieces: tuple[type, ...]) -> ArgumentParser:
    """A parser with the flags of the config pieces a command takes (landscape.base.config's SurfaceConfig and
    PlotConfig pieces); the command adds its own positionals."""
    p = ArgumentParser(prog=prog, description=description, formatter_class=DefaultsFormatter, add_help=add_help)
    for piece in pieces:
        add_config_args(p, piece)
    return p


def surface_config(args: argparse.Namespace, **overrides: Any) -> SurfaceConfig:
    """The SurfaceConfig of a command's flags (the fields of the pieces it does not take keep their defaults)."""
    return config_from_args(SurfaceConfig, args, **overrides)


def replot_stem(path: str, out: str | None, name: str | None) -> str:
    """Where a re-plotted surface file's figures go: OUT/NAME when --out or --name is given (the folder defaults to
    the file's, the name to its stem), else beside the file, named after it. Fails early if it is not writable."""
    if name is not None:
        check_file_stem(name, "--name")
    if out is None and name is None:
        return figure_stem(path)
    folder = out if out is not None else (os.path.dirname(path) or ".")
    check_writable(folder)
    return os.path.join(folder, name or os.path.splitext(os.path.basename(path))[0])


def compute(cfgs: list[SurfaceConfig]) -> list[tuple[str, Surface, str]] | None:
    """Compute or resume each surface file, every rank of a torchrun job taking part. Returns, on rank 0, each
    file's path, its surface (as computed, not read back) and a one-line report; None on the other ranks, which
    have nothing to plot."""
    from landscape.pipelines.from_checkpoint import run_surface
    from landscape.runtime.distributed import exclusive_output, process_group

    done = []
    with process_group(cfgs[0].device) as info:
        for cfg in cfgs:
            t0 = time.perf_counter()
            with exclusive_output(cfg.out, info, stem=os.path.basename(cfg.path)):  # one writer per surface file
                run = run_surface(cfg, info, share=False)
            procs = f" on {info.world_size} processes" if info.is_distributed else ""
            done.append((run.path, run.surface, f"computed {run.computed} of {run.total} points ("
                         f"{run.already_done} already done) in {time.perf_counter() - t0:.1f}s{procs} -> {run.path}"))
    return done if info.is_main else None


def figure_stem(path: str) -> str:
    """Where a surface file's figures go: beside it, named after it; fails early if that folder is not writable."""
    check_writable(os.path.dirname(path) or ".")
    return os.path.splitext(path)[0]


def surface_of(source: str, computed: dict[str, Surface]) -> Surface:
    """The surface a command was given: computed in this run (by checkpoint), else read from its .h5 file."""
    return computed[source] if source in computed else read_surface(source)
