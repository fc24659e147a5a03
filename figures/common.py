"""What the figure scripts that train their own runs share: the flags --preset, --out, --epochs and --device,
and the preset those flags select."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import numpy as np

from landscape.base import DEVICES, ArgumentParser, ConfigError, DefaultsFormatter


def preset_parser(prog: str, description: str | None, presets: dict[str, Any], out: str,
                  add_help: bool = True) -> ArgumentParser:
    p = ArgumentParser(prog=prog, description=description, formatter_class=DefaultsFormatter, add_help=add_help)
    p.add_argument("--preset", choices=sorted(presets), default="quick")
    p.add_argument("--out", default=out, help="folder for runs, surfaces, figures, table")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="auto: cuda:LOCAL_RANK when CUDA is there, else the CPU")
    return p


def chosen_preset(args: argparse.Namespace, presets: dict[str, Any]) -> Any:
    """The preset named by --preset, with --epochs applied (refused below 1: never silently the preset's)."""
    preset = presets[args.preset]
    if args.epochs is None:
        return preset
    if args.epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {args.epochs} (leave it out for the preset's {preset.epochs})")
    return dataclasses.replace(preset, epochs=args.epochs)


def contour_levels(linear: tuple[float, float, float], log_levels: tuple[float, float, int], log: bool = False
                   ) -> tuple[np.ndarray, str]:
    """The shared 2D contour levels of a figure and what they are: linear ones, np.arange(start, stop, step) (Li et
    al.'s 0.1 to 10 by 0.5), or with `log` log-spaced ones, np.geomspace(start, stop, num)."""
    if log:
        return np.geomspace(*log_levels[:2], int(log_levels[2])), "log-spaced"
    return np.arange(*linear), "linear"
