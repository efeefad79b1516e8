"""Input checks shared by the public API.

Bad input raises ``ValueError`` with a message that names the problem. Nothing is
clipped or renormalised here or anywhere else in wbench.

Dtype table
-----------
One rule for numpy arrays and torch tensors alike (:func:`check_real_dtype`):

==========================  ====================================  ===================================
dtype                       ``w1``, ``optimal_flow_plan``         ``apply_flow`` (image and plan)
                            (masses)
==========================  ====================================  ===================================
float16, bfloat16 (torch),  accepted: converted exactly to        accepted: computed in the image's
float32, float64            float64 and solved in float64         dtype (the plan is cast to it)
int8/16/32/64,              accepted: exact in float64 (an        refused: a flow moves fractional
uint8/16/32/64              int64/uint64 entry beyond 2**53,      mass, an integer result would
                            which is not, is refused)             truncate it
bool, complex, float8,      refused                               refused
object, str
==========================  ====================================  ===================================
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


_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_NUMPY_FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
_INT_DTYPES = (
    torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.uint16, torch.uint32, torch.uint64,
)  # fmt: skip
_FLOAT64_EXACT = 2**53
"""Every integer of magnitude up to 2**53 is exact in float64; above it, not every one is."""


def dtype_kind(a: ArrayLike) -> str:
    """The row of the dtype table (module docstring) for ``a``: "float", "integer" or "other"."""
    if isinstance(a, torch.Tensor):
        if a.dtype in _FLOAT_DTYPES:
            return "float"
        return "integer" if a.dtype in _INT_DTYPES else "other"
    dt = a.dtype
    if dt in _NUMPY_FLOATS:
        return "float"
    return "integer" if dt.kind in "iu" else "other"


def check_real_dtype(name: str, a: ArrayLike, *, integers: bool) -> None:
    """Apply the dtype table (module docstring) to ``a``; ``integers``: whether integer dtypes are masses.

    Raises
    ------
    ValueError
        For bool, complex or any non-real dtype; for integers unless ``integers``; for int64/uint64
        entries beyond 2**53, which float64 cannot hold exactly.
    """
    kind = dtype_kind(a)
    if kind == "float":
        return
    if kind == "integer" and integers:
        values = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a
        if values.dtype.itemsize == 8 and values.size:
            big = max(abs(int(values.max())), abs(int(values.min())))
            if big > _FLOAT64_EXACT:
                raise ValueError(
                    f"{name} has integer entries up to {big}, not exactly representable in float64 "
                    f"(the limit is 2**53 = {_FLOAT64_EXACT}); convert it to a float dtype yourself"
                )
        return
    expected = "a real floating dtype (float16, bfloat16, float32, float64)"
    if integers:
        expected += " or an integer dtype"
    why = ""
    if kind == "integer":
        why = ": a flow moves fractional mass, so an integer result would truncate it"
    raise ValueError(f"{name} has dtype {a.dtype}; expected {expected}{why}")


def check_flow_tensor(name: str, a: object) -> None:
    """Raise unless ``a`` is a torch tensor of a real float dtype (dtype table, ``apply_flow`` column)."""
    if not isinstance(a, torch.Tensor):
        hint = " (convert with torch.from_numpy)" if isinstance(a, np.ndarray) else ""
        raise ValueError(f"{name} must be a torch.Tensor, got {type(a).__name__}{hint}")
    check_real_dtype(name, a, integers=False)


def to_numpy64(name: str, a: ArrayLike) -> np.ndarray:
    """Return ``a`` as a float64 numpy array (a copy for tensors), by the dtype table (masses).

    Real floats and integers are converted exactly; bool, complex and other dtypes raise
    ``ValueError`` (see :func:`check_real_dtype`).
    """
    if not isinstance(a, torch.Tensor):
        a = np.asarray(a)
    check_real_dtype(name, a, integers=True)
    if isinstance(a, torch.Tensor):
        return a.detach().to("cpu", torch.float64).numpy()
    return a.astype(np.float64, copy=False)


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


def is_real_number(value: object) -> bool:
    """Whether ``value`` is a real Python or numpy scalar (int, float; never bool, complex or str)."""
    return isinstance(value, int | float | np.floating | np.integer) and not isinstance(value, bool)


def plain(value: object) -> str:
    """``value`` for an error message: numpy scalars as plain numbers (``1.5``, not ``np.float64(1.5)``)."""
    if isinstance(value, np.floating):
        return repr(float(value))
    if isinstance(value, np.integer):
        return repr(int(value))
    return repr(value)


def check_positive(name: str, value: float) -> None:
    """Raise unless ``value`` is a finite real number > 0 (a bool, string or tensor is not one)."""
    if not (is_real_number(value) and np.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {plain(value)}")
