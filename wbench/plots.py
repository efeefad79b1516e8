"""Certified-accuracy plots (matplotlib, Agg backend, written atomically)."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from wbench.runio import atomic_write_bytes


@contextlib.contextmanager
def _png_figure(
    path: str | os.PathLike, nrows: int, ncols: int, **subplots: Any
) -> Iterator[tuple[Any, Any]]:
    """``(figure, axes)`` of ``plt.subplots`` (Agg, 120 dpi, a 2-D array of axes); when the block ends
    without an error the laid-out figure is written to ``path`` as a PNG, atomically. It is always closed.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, dpi=120, squeeze=False, **subplots)
    try:
        yield fig, axes
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


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
    plot_certified_accuracy_panels([(curves, xlabel)], path, title=title, styles=styles, caps=caps)


def plot_certified_accuracy_panels(
    panels: Sequence[tuple[Mapping[str, tuple[Sequence[float], Sequence[float]]], str]],
    path: str | os.PathLike,
    *,
    title: str = "",
    styles: Mapping[str, Mapping[str, Any]] | None = None,
    caps: Mapping[str, float] | None = None,
) -> None:
    """Side-by-side panels of :func:`plot_certified_accuracy`, one per ``(curves, xlabel)``, in one PNG.

    Used to show the same certificates against radii in two units (normalised and pixel mass).
    ``caps`` (see :func:`plot_certified_accuracy`) are drawn on the first panel only, whose radii are
    in normalised mass.
    """
    with _png_figure(path, 1, len(panels), figsize=(6.0 * len(panels), 4.0)) as (fig, axes):
        for panel, (ax, (curves, xlabel)) in enumerate(zip(axes[0], panels, strict=True)):
            panel_caps = caps if panel == 0 else None  # the sample-count cap is in normalised mass
            for label, (radii, acc) in curves.items():
                style = dict((styles or {}).get(label, {}))
                (line,) = ax.step(
                    np.asarray(radii), 100 * np.asarray(acc), where="post", label=label, **style
                )
                if panel_caps and label in panel_caps:
                    ax.axvline(panel_caps[label], color=line.get_color(), linestyle=":", linewidth=1.0)
            if panel_caps:
                ax.plot([], [], color="0.4", linestyle=":", linewidth=1.0, label="largest certifiable radius")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("certified accuracy (%)")
            ax.set_ylim(0, 100)
            ax.grid(alpha=0.3)
            if curves:
                ax.legend(fontsize=7)
        if title:
            fig.suptitle(title) if len(panels) > 1 else axes[0][0].set_title(title)


def plot_robust_accuracy(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float | None]]],
    path: str | os.PathLike,
    *,
    certified: tuple[Sequence[float], Sequence[float]] | None = None,
    mean_mass: float | None = None,
    title: str = "",
    xlabel: str = "W1 radius (normalised mass)",
    log_x: bool = False,
) -> None:
    """Empirical robust accuracy vs attack budget, with a certified curve on the same axes.

    One panel of :func:`plot_robustness_panels`: ``curves`` maps a label to ``(budgets,
    accuracy)`` (dashed, markers) and ``certified`` is ``(radii, certified accuracy)`` (solid step).
    """
    panel = RobustnessPanel(
        title, {"certified accuracy (lower bound)": certified} if certified is not None else {}, curves
    )
    plot_robustness_panels([panel], path, mean_mass=mean_mass, xlabel=xlabel, log_x=log_x)


class RobustnessPanel(NamedTuple):
    """One panel of :func:`plot_robustness_panels`: curves as ``label -> (radii, accuracy as a fraction)``."""

    title: str
    certified: Mapping[str, tuple[Sequence[float], Sequence[float]]]
    empirical: Mapping[str, tuple[Sequence[float], Sequence[float | None]]]


def plot_robustness_panels(
    panels: Sequence[RobustnessPanel],
    path: str | os.PathLike,
    *,
    styles: Mapping[str, Mapping[str, Any]] | None = None,
    mean_mass: float | None = None,
    title: str = "",
    xlabel: str = "W1 radius (normalised mass)",
    log_x: bool = False,
) -> None:
    """Certified (solid step) and empirical (dashed, markers) accuracy against one W1 axis, a panel each.

    The structure of Levine & Feizi's Figure 7 (Appendix C): at each radius the certificate is a
    lower bound and an attack an upper bound on the true robust accuracy. An empirical point of
    ``None`` (no images) is left out.

    Parameters
    ----------
    panels : sequence of RobustnessPanel
        Side by side, sharing the y axis (accuracy in %).
    path : path-like
        Output PNG.
    styles : mapping, optional
        ``label -> keyword arguments`` of ``Axes.step`` (certified) or ``Axes.plot`` (empirical),
        added to the defaults (solid; dashed with circles).
    mean_mass : float, optional
        A top axis gives the radius in pixel-mass units: normalised radius times this mass.
    log_x : bool
        Logarithmic radius axis (radii <= 0 are left out of the curves).
    """
    n = max(len(panels), 1)
    with _png_figure(path, 1, n, figsize=(6.0 * n, 4.4), sharey=True) as (fig, axes):
        for ax, panel in zip(axes[0], panels, strict=False):
            for label, (radii, acc) in panel.certified.items():
                r, a = np.asarray(radii, dtype=np.float64), np.asarray(acc, dtype=np.float64)
                keep = r > 0 if log_x else np.ones(r.shape, dtype=bool)
                style = {"linestyle": "-", **(styles or {}).get(label, {})}
                ax.step(r[keep], 100 * a[keep], where="post", label=label, **style)
            for label, (eps, acc) in panel.empirical.items():
                pts = [
                    (e, a) for e, a in zip(eps, acc, strict=True) if a is not None and (e > 0 or not log_x)
                ]
                if pts:
                    e, a = np.asarray(pts, dtype=np.float64).T
                    style = {"linestyle": "--", "marker": "o", **(styles or {}).get(label, {})}
                    ax.plot(e, 100 * a, label=label, **style)
            if log_x:
                ax.set_xscale("log")
            else:
                ax.set_xlim(left=0)
            ax.set_xlabel(xlabel)
            ax.set_ylim(0, 100)
            ax.grid(alpha=0.3)
            if mean_mass is not None and mean_mass > 0:
                top = ax.secondary_xaxis("top", functions=(lambda r: r * mean_mass, lambda p: p / mean_mass))
                top.set_xlabel(f"pixel-mass units (x mean image mass {mean_mass:.3g})", fontsize=8)
            if panel.title:
                ax.set_title(panel.title, fontsize=9, pad=28 if mean_mass else 6)
            if panel.certified or panel.empirical:
                ax.legend(fontsize=7)
        axes[0][0].set_ylabel("accuracy (%)")
        if title:
            fig.suptitle(title, fontsize=10)


def plot_attack_examples(
    examples: Mapping[tuple[int, float], tuple[Any, Any, float]],
    path: str | os.PathLike,
    *,
    max_images: int = 8,
) -> None:
    """A grid: a column per image (its largest budget), clean on top, adversarial below with its exact W1."""
    best: dict[int, tuple[float, Any, Any, float]] = {}
    for (i, eps), (clean, adv, w) in examples.items():
        if i not in best or eps > best[i][0]:
            best[i] = (eps, clean, adv, w)
    chosen = sorted(best.items())[:max_images]
    n = max(len(chosen), 1)
    with _png_figure(path, 2, n, figsize=(1.4 * n, 3.2)) as (_, axes):
        for col, (i, (eps, clean, adv, w)) in enumerate(chosen):
            for row, img in enumerate((clean, adv)):
                a = np.asarray(img, dtype=np.float64)
                a = a[0] if a.shape[0] == 1 else np.moveaxis(a, 0, -1) / max(a.max(), 1e-12)
                axes[row, col].imshow(a, cmap="gray" if a.ndim == 2 else None)
                axes[row, col].set_xticks([])
                axes[row, col].set_yticks([])
            axes[0, col].set_title(f"#{i}", fontsize=7)
            axes[1, col].set_title(f"W1={w:.3g}\n(eps {eps:g})", fontsize=6)
        axes[0, 0].set_ylabel("clean", fontsize=7)
        axes[1, 0].set_ylabel("adversarial", fontsize=7)
