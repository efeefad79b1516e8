"""Certified-accuracy plots (matplotlib, Agg backend, written atomically)."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from wbench.runio import atomic_write_bytes


def plot_certified_accuracy(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | os.PathLike,
    *,
    title: str = "",
    xlabel: str = "certified W1 radius (normalised mass)",
    styles: Mapping[str, Mapping[str, Any]] | None = None,
    caps: Mapping[str, float] | None = None,
) -> None:
    """One step curve of certified accuracy vs radius per entry of ``curves``, saved as a PNG.

    Parameters
    ----------
    curves : mapping
        ``label -> (radii, accuracy)``, accuracy as a fraction in [0, 1].
    path : path-like
        Output PNG.
    styles : mapping, optional
        ``label -> keyword arguments of Axes.step`` (e.g. ``{"linestyle": "--", "color": "C1"}``).
    caps : mapping, optional
        ``label -> the largest radius the run's sample count can certify``, drawn as a dotted
        vertical line in the curve's colour: no curve can extend past it.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 4.0), dpi=120)
    try:
        for label, (radii, acc) in curves.items():
            style = dict((styles or {}).get(label, {}))
            (line,) = ax.step(np.asarray(radii), 100 * np.asarray(acc), where="post", label=label, **style)
            if caps and label in caps:
                ax.axvline(caps[label], color=line.get_color(), linestyle=":", linewidth=1.0)
        if caps:
            ax.plot([], [], color="0.4", linestyle=":", linewidth=1.0, label="largest certifiable radius")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("certified accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        if title:
            ax.set_title(title)
        if curves:
            ax.legend(fontsize=7)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
