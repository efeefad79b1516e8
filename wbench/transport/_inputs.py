"""Validation of histogram pairs for the W1 solvers (Corollary 2: per channel, equal masses)."""

from __future__ import annotations

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
        Shape (H, W) or (C, H, W), any real dtype, non-negative, finite, and with the same
        total mass in every channel (relative tolerance :func:`wbench._validation.mass_rtol`
        of the less precise of the two dtypes). Channels may differ in mass from each other.

    Raises
    ------
    ValueError
        On wrong type or ndim, shape mismatch, an empty grid, NaN/inf, negative mass, or
        unequal mass (naming the channel).
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
    mx, my = x64.sum(axis=(1, 2)), y64.sum(axis=(1, 2))
    bad = np.abs(mx - my) > rtol * np.maximum(mx, my)
    if bad.any():
        c = int(np.argmax(bad))
        where = f" in channel {c}" if channels_given else ""
        raise ValueError(
            f"unequal mass{where}: {x_name} has {mx[c]:.12g}, {y_name} has {my[c]:.12g} "
            f"(relative tolerance {rtol:g}); W1 needs equal total mass per channel"
        )
    return HistogramPair(x64, y64, mx, channels_given)
