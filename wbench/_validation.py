"""Input checks shared by the public API.

Bad input raises ``ValueError`` with a message that names the problem. Nothing is
clipped or renormalised here or anywhere else in wbench.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor


def mass_rtol(dtype: torch.dtype | np.dtype) -> float:
    """Relative tolerance for comparing total masses, chosen per dtype."""
    if dtype in (torch.float64, np.float64, np.dtype("float64")):
        return 1e-9
    return 1e-5


def to_numpy64(name: str, a: ArrayLike) -> np.ndarray:
    """Return ``a`` as a float64 numpy array (a copy for tensors), rejecting non-numeric input."""
    if isinstance(a, torch.Tensor):
        a = a.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(a)
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise ValueError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    return arr.astype(np.float64, copy=False)


def check_finite(name: str, a: ArrayLike) -> None:
    """Raise if ``a`` holds NaN or inf."""
    ok = bool(torch.isfinite(a).all()) if isinstance(a, torch.Tensor) else bool(np.isfinite(a).all())
    if not ok:
        raise ValueError(f"{name} contains NaN or inf")


def check_nonnegative(name: str, a: ArrayLike) -> None:
    """Raise if ``a`` has a negative entry (a mass distribution must be >= 0)."""
    neg = bool((a < 0).any())
    if neg:
        raise ValueError(f"{name} has negative mass (min {float(a.min()):.3g})")


def check_image_dims(name: str, a: ArrayLike, allowed: Sequence[int] = (2, 3)) -> None:
    """Raise unless ``a`` has one of the allowed numbers of dimensions."""
    if a.ndim not in allowed:
        dims = " or ".join(str(d) for d in allowed)
        raise ValueError(
            f"{name} must have {dims} dimensions ((H, W) or (C, H, W)); got shape {tuple(a.shape)}"
        )


def check_same_shape(a_name: str, a: ArrayLike, b_name: str, b: ArrayLike) -> None:
    """Raise if two arrays differ in shape."""
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"shape mismatch: {a_name} {tuple(a.shape)} vs {b_name} {tuple(b.shape)}")


def check_positive(name: str, value: float) -> None:
    """Raise unless ``value`` is a finite number > 0."""
    if not (isinstance(value, int | float | np.floating | np.integer) and np.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
