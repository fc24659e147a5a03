"""What makes a figure readable alone, read from its artists (never its pixels): every Axes with data has x and y
labels, every labelled line or collection is in a legend, filled contours have a colourbar, no two texts of the
figure (tick labels, contour labels, titles, legends) overlap once drawn, and the contour levels of the panels a
figure compares. `problems(fig)` lists what fails, one line each, so a test's assertion shows them all."""

from __future__ import annotations

import itertools

import numpy as np
from matplotlib.contour import ContourSet
from matplotlib.figure import Figure
from matplotlib.text import Text


def _is_colorbar(ax) -> bool:
    return hasattr(ax, "_colorbar")


def _has_data(ax) -> bool:
    return bool(ax.lines or ax.collections or ax.images)


def _name(ax) -> str:
    return repr(ax.get_title() or ax.get_label() or f"axes at {tuple(np.round(ax.get_position().bounds, 2))}")


def legends(fig: Figure) -> list:
    """The figure's legends and its Axes'."""
    return [lg for lg in [*fig.legends, *(ax.get_legend() for ax in fig.axes)] if lg is not None]


def legend_texts(fig: Figure) -> set[str]:
    return {t.get_text() for lg in legends(fig) for t in lg.get_texts()}


def problems(fig: Figure) -> list[str]:
    """Every way the figure fails to be readable alone."""
    fig.canvas.draw()
    found = []
    legended = legend_texts(fig)
    colourbars = {id(ax._colorbar.mappable) for ax in fig.axes if _is_colorbar(ax)}
    for ax in fig.axes:
        if _is_colorbar(ax) or not _has_data(ax):
            continue
        twins = [s for s in ax.get_shared_x_axes().get_siblings(ax) if s.bbox.bounds == ax.bbox.bounds]
        if not any(s.get_xlabel() for s in twins):  # a twinx's x label is its twin's
            found.append(f"{_name(ax)}: no x label")
        if not ax.get_ylabel():
            found.append(f"{_name(ax)}: no y label")
        for artist in [*ax.lines, *ax.collections]:
            label = artist.get_label()
            if label and not label.startswith("_") and label not in legended:
                found.append(f"{_name(ax)}: {label!r} is not in a legend")
        for cs in ax.collections:
            if isinstance(cs, ContourSet) and cs.filled and id(cs) not in colourbars:
                found.append(f"{_name(ax)}: filled contours without a colourbar")
    found += [f"texts overlap: {a!r} and {b!r}" for a, b in overlapping_texts(fig)]
    return found


def _texts(fig: Figure) -> list[Text]:
    """The drawn texts that must not run into each other: tick labels, contour labels, axis labels and titles."""
    texts = []
    for ax in fig.axes:
        if getattr(ax, "name", "") == "3d":
            continue
        for axis in (ax.xaxis, ax.yaxis):
            # a twin's shared axis is hidden, an Axes set off (a panel of text) draws none; _update_ticks: those drawn
            if axis.get_visible() and ax.axison:
                texts += [t for tick in axis._update_ticks() for t in (tick.label1, tick.label2)
                          if t.get_visible() and t.get_text()]
        texts += [t for t in (ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label)
                  if t.get_visible() and t.get_text()]
        for cs in ax.collections:
            if isinstance(cs, ContourSet):
                texts += list(getattr(cs, "labelTexts", []))
    return texts


def overlapping_texts(fig: Figure) -> list[tuple[str, str]]:
    """Pairs of texts (a legend counts as one) that run together: their window extents, grown by a pixel, overlap
    once drawn (touching counts: "1.0" of one panel against "-1.0" of the next reads as "1.0 -1.0")."""
    renderer = fig.canvas.get_renderer()
    boxes = [(t.get_text(), t.get_window_extent(renderer).padded(1)) for t in _texts(fig)]
    if fig._suptitle is not None and fig._suptitle.get_text():
        boxes.append((fig._suptitle.get_text(), fig._suptitle.get_window_extent(renderer).padded(1)))
    boxes += [(f"legend {[t.get_text() for t in lg.get_texts()][:2]}", lg.get_window_extent(renderer).padded(1))
              for lg in legends(fig)]
    return [(a, b) for (a, ba), (b, bb) in itertools.combinations(boxes, 2)
            if ba.width > 0 and bb.width > 0 and ba.overlaps(bb)]


def contour_levels(fig: Figure) -> list[np.ndarray]:
    """The levels of each Axes' contour set, in the figure's order."""
    return [np.asarray(cs.levels) for ax in fig.axes for cs in ax.collections if isinstance(cs, ContourSet)]


def evenly_spaced(levels: np.ndarray) -> bool:
    steps = np.diff(levels)
    return bool(len(steps)) and np.allclose(steps, steps[0], rtol=1e-6)
