"""How surface files become figure files: `PlotConfig`, made of small pieces (what every figure takes, the contour
levels of a 2D one, the loss axis of a 1D one), and the figure formats. No torch: a re-plot parses these flags
without loading it."""

from __future__ import annotations

import math
from dataclasses import dataclass

from landscape.base.config import check_choice
from landscape.base.errors import ConfigError
from landscape.base.flags import option

FORMATS = ("png", "pdf", "svg", "html")  # html: one interactive page per 2D surface (landscape.output.viewers)


@dataclass(frozen=True, kw_only=True)
class FigureFlags:
    """What every figure takes: the top of the loss, the title, the file formats."""

    loss_max: float | None = option(None, "clip the plotted loss at this value: the top contour level in 2D, the "
                                    "top of the loss axis in 1D (default: the largest finite loss)", group="figures")
    title: str | None = option(None, "figure title (default: from the checkpoint: weight decay, batch size, test "
                               "error)", group="figures")
    formats: tuple[str, ...] = option(("png", "pdf", "html"), "figure file formats; html: one interactive 3D page "
                                      "per 2D surface, self-contained (works offline)", choices=FORMATS,
                                      group="figures")


@dataclass(frozen=True, kw_only=True)
class LevelsFlags:
    """The contour levels of a 2D figure."""

    levels: int | None = option(None, "number of evenly spaced contour levels from the lowest value to the top "
                                "(2D; default: for a loss, Li et al.'s 0.1 to 10 by 0.5, shared by every surface, "
                                "unless it crosses fewer than 3 of them; else 20)", group="figures")


@dataclass(frozen=True, kw_only=True)
class LogFlags:
    """The loss axis of a 1D figure."""

    log: bool = option(False, "log scale for the loss axis (1D; the axis label says so)", group="figures")


PLOT_PIECES = (FigureFlags, LevelsFlags, LogFlags)


@dataclass(frozen=True, kw_only=True)
class PlotConfig(LogFlags, LevelsFlags, FigureFlags):
    """How surface files become figure files (landscape.output.render): the figure flags of plot1d and plot2d,
    made of the pieces above."""

    def __post_init__(self) -> None:
        if self.levels is not None and self.levels < 2:
            raise ConfigError(f"--levels must be >= 2, got {self.levels}")
        if self.loss_max is not None and not math.isfinite(self.loss_max):
            raise ConfigError(f"--loss-max must be a finite number, got {self.loss_max}")
        for fmt in self.formats:
            check_choice(fmt, FORMATS, "--formats")
