"""Validation of histogram pairs for the W1 solvers (Corollary 2: per channel, equal masses)."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from wbench._validation import (
    ArrayLike,
    check_finite,
    check_image_dims,
    check_nonnegative,
    check_same_shape,
    mass_rtol,
    to_numpy64,
)


class HistogramPair(NamedTuple):
    """Two validated histograms as float64 arrays of shape (C, H, W), with their channel masses."""

    x: np.ndarray
    y: np.ndarray
    mass: np.ndarray
    """(C,) per-channel mass of ``x`` (equal to that of ``y`` within :func:`mass_rtol`)."""
    channels_given: bool
    """Whether the input had a channel axis ((C, H, W)) rather than (H, W)."""


def _dtype_of(a: ArrayLike) -> torch.dtype | np.dtype:
    return a.dtype if isinstance(a, torch.Tensor) else np.asarray(a).dtype


def _as_array(name: str, a: object) -> ArrayLike:
    if isinstance(a, torch.Tensor | np.ndarray):
        return a
    raise ValueError(f"{name} must be a numpy array or a torch tensor, got {type(a).__name__}")


def validate_histogram_pair(
    x: ArrayLike, y: ArrayLike, *, x_name: str = "x", y_name: str = "y"
) -> HistogramPair:
    """Check two mass distributions for W1 and return them as float64 (C, H, W) arrays.

    Parameters
    ----------
    x, y : numpy.ndarray or torch.Tensor
        Shape (H, W) or (C, H, W), a dtype the dtype table of :mod:`wbench._validation`
        accepts for masses (real floats and integers), non-negative, finite, with a total
        mass that is finite in float64 and the same in every channel (relative tolerance
        :func:`wbench._validation.mass_rtol` of the less precise of the two dtypes). Channels
        may differ in mass from each other.

    Raises
    ------
    ValueError
        On wrong type, dtype or ndim, shape mismatch, an empty grid, NaN/inf, negative mass,
        a total mass that overflows float64, or unequal mass (naming the channel).
    """
    x, y = _as_array(x_name, x), _as_array(y_name, y)
    check_image_dims(x_name, x)
    check_image_dims(y_name, y)
    check_same_shape(x_name, x, y_name, y)
    if min(x.shape) < 1:
        raise ValueError(f"{x_name} and {y_name} must be non-empty; got shape {tuple(x.shape)}")
    rtol = max(mass_rtol(_dtype_of(x)), mass_rtol(_dtype_of(y)))
    x64, y64 = to_numpy64(x_name, x), to_numpy64(y_name, y)
    for name, a in ((x_name, x64), (y_name, y64)):
        check_finite(name, a)
        check_nonnegative(name, a)
    channels_given = x64.ndim == 3
    if not channels_given:
        x64, y64 = x64[None], y64[None]
    with np.errstate(over="ignore"):
        mx, my = x64.sum(axis=(1, 2)), y64.sum(axis=(1, 2))
    for name, m in ((x_name, mx), (y_name, my)):
        if not np.isfinite(m).all():
            c = int(np.argmin(np.isfinite(m)))
            where = f" in channel {c}" if channels_given else ""
            raise ValueError(
                f"total mass of {name} overflows float64{where} (its pixels are finite, their sum is not); "
                "rescale the inputs: W1 is homogeneous, W1(s x, s y) = s W1(x, y)"
            )
    bad = np.abs(mx - my) > rtol * np.maximum(mx, my)
    if bad.any():
        c = int(np.argmax(bad))
        where = f" in channel {c}" if channels_given else ""
        raise ValueError(
            f"unequal mass{where}: {x_name} has {mx[c]:.12g}, {y_name} has {my[c]:.12g} "
            f"(relative tolerance {rtol:g}); W1 needs equal total mass per channel"
        )
    return HistogramPair(x64, y64, mx, channels_given)


class ReducedPlane(NamedTuple):
    """The part of a transport problem that moves: W1(x, y) = ``mass`` * W1(``source``, ``target``)."""

    source: np.ndarray
    """(H, W) float64, ``max(x - y, 0)`` divided by its sum (1)."""
    target: np.ndarray
    """(H, W) float64, ``max(y - x, 0)`` divided by its sum (1); disjoint from the source's support."""
    mass: float
    """The mass that moves, ``sum(max(x - y, 0))``."""


def reduce_plane(x: np.ndarray, y: np.ndarray) -> ReducedPlane | None:
    r"""Remove the mass that stays put, ``min(x, y)``, from one validated (H, W) plane pair.

    W1 depends on ``x - y`` only (Kantorovich-Rubinstein duality,
    :math:`W_1(x, y) = \sup_{\|f\|_{Lip} \le 1} \langle f, x - y \rangle`, for any ground
    metric), so ``W1(x, y) = W1(max(x - y, 0), max(y - x, 0))``. The differences are computed
    before any division, so masses that stay put, however large (1e12 next to 1e-12), cost no
    precision: the solvers then see two unit-mass histograms with disjoint supports, on which
    their tolerances are relative to W1 itself (W1 >= mass moved, every move costing >= 1).

    When the two masses differ (within the validation tolerance), ``y`` is first scaled to the
    mass of ``x``, as every solver here did before: W1 is then that of ``x`` and ``y * (Mx / My)``.

    Returns
    -------
    ReducedPlane or None
        None when nothing moves (``x == y`` up to that scaling): W1 = 0.
    """
    mx, my = float(x.sum()), float(y.sum())
    if mx == 0.0:
        return None
    if my != mx:
        y = y * (mx / my)
    diff = x - y
    source, target = np.maximum(diff, 0.0), np.maximum(-diff, 0.0)
    ms, mt = float(source.sum()), float(target.sum())
    if ms == 0.0 or mt == 0.0:  # one side empty: the other is rounding of the scaling above
        return None
    return ReducedPlane(source / ms, target / mt, ms)


def checked_w1(value: float) -> float:
    """``value``, or ``ValueError`` if the W1 of finite inputs overflowed float64."""
    if not math.isfinite(value):
        raise ValueError(
            f"W1 overflows float64 ({value}): the mass moved times the pixel distances exceeds "
            f"{np.finfo(np.float64).max:.3g}; rescale the inputs (W1(s x, s y) = s W1(x, y))"
        )
    return value
