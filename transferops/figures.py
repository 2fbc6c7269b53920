"""Pictures for people: matplotlib without a display, saved one way everywhere."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: CI and servers have no display
import matplotlib.pyplot as plt

__all__ = ["plt", "save_figure"]


def save_figure(figure, path: Path) -> None:
    """Lay out, write a PNG and release the figure's memory."""
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
