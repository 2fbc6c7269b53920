"""Pictures for people: matplotlib without a display, saved one way everywhere.

Figures are made with matplotlib's object-oriented API, not ``pyplot``: no
global registry of open figures to close (the monitoring flow and the service's
process draw from threads), no GUI backend to choose, and a lighter import
(pyplot's is about half a second of every stage process's start).
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

__all__ = ["new_figure", "save_figure"]


def new_figure(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], **subplots):
    """A figure of ``figsize`` inches and its axes: ``Figure.subplots``' arguments and result."""
    figure = Figure(figsize=figsize)
    return figure, figure.subplots(nrows, ncols, **subplots)


def save_figure(figure: Figure, path: Path) -> None:
    """Lay out and write a PNG (the Agg renderer: nothing needs a display)."""
    figure.tight_layout()
    figure.savefig(path, dpi=110)
