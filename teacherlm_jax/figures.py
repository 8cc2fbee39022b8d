"""Figures: matplotlib's pyplot on its file-only backend, imported when a job first draws (most never do)."""
from __future__ import annotations

from typing import Any


def pyplot() -> Any:
    """matplotlib.pyplot with the Agg backend: jobs run without a display, and write PNGs (paths.write_figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
