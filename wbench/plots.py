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
    """
    plot_certified_accuracy_panels([(curves, xlabel)], path, title=title, styles=styles)


def plot_certified_accuracy_panels(
    panels: Sequence[tuple[Mapping[str, tuple[Sequence[float], Sequence[float]]], str]],
    path: str | os.PathLike,
    *,
    title: str = "",
    styles: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """Side-by-side panels of :func:`plot_certified_accuracy`, one per ``(curves, xlabel)``, in one PNG.

    Used to show the same certificates against radii in two units (normalised and pixel mass).
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6.0 * len(panels), 4.0), dpi=120, squeeze=False)
    try:
        for ax, (curves, xlabel) in zip(axes[0], panels, strict=True):
            for label, (radii, acc) in curves.items():
                style = dict((styles or {}).get(label, {}))
                ax.step(np.asarray(radii), 100 * np.asarray(acc), where="post", label=label, **style)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("certified accuracy (%)")
            ax.set_ylim(0, 100)
            ax.grid(alpha=0.3)
            if curves:
                ax.legend(fontsize=7)
        if title:
            fig.suptitle(title) if len(panels) > 1 else axes[0][0].set_title(title)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
