"""wbench's noise stream: Laplace variables defined by a seed and an address, on every device and build.

Version ``philox4x32-10/v1`` (:data:`STREAM_VERSION`, recorded by every run) is defined as follows.

* **Address.** A noisy copy is addressed by ``(seed, index, copy, tag)``: the run seed, an index
  (the data-set index of the image for smoothing), the copy number ``k`` and a :class:`Tag` that
  keeps the uses of one seed apart. All four are unsigned 32-bit integers.
* **Words.** Its 32-bit words are the Philox4x32-10 counter-based generator (Salmon et al., SC'11;
  checked against Random123's known answers) under key ``(seed, index)`` at counters
  ``(j, copy, tag, 0)`` for blocks ``j = 0, 1, ...``; variable ``p`` of the copy is word ``p % 4``
  of block ``p // 4``.
* **Laplace variables.** Word ``w`` becomes a unit-scale Laplace variable by the inverse CDF:
  ``V = ((w & (2**23 - 1)) + 1/2) 2**-23`` is uniform on a grid of (0, 1) symmetric about 1/2, so
  ``log V`` is minus an Exp(1) variable, negated when bit 31 of ``w`` (independent of ``V``) is set.
  ``log V`` is computed in float32 by IEEE additions, multiplications and one division only
  (:func:`laplace_from_words`: Cody-Waite reduction by ln 2 and an odd atanh series, within 1.5 ulp
  of the true logarithm), never by a library ``log``, whose last bit varies between CPUs, GPUs and
  vector widths. Every variable is finite: ``|L| <= 24 ln 2 < 16.7``.
* **Layout.** Wasserstein (flow) noise of a ``(C, H, W)`` image takes variables ``[0, C(H-1)W)`` as
  the vertical flows ``(C, H-1, W)`` and the next ``C H W`` as the horizontal flows ``(C, H, W)``,
  of which the last column is drawn and not used; pixel (Laplace) noise takes the first ``C H W``.

The reference implementation here uses torch int64 operations only (the 32-bit products are split
into 16-bit halves, so nothing overflows) and runs on any device; :mod:`wbench.fastnoise` is the
same stream compiled for the CPU. Both give the same words bit for bit, and the same noisy copies
bit for bit on the CPU. Across devices the words agree bit for bit; the float32 arithmetic uses only
correctly rounded operations, so CUDA agrees as well unless a compiler fuses them.
"""

from __future__ import annotations

import struct
from enum import IntEnum

import torch

STREAM_VERSION = "philox4x32-10/v1"
"""Name and version of the stream; a run records it (``environment_record()['noise_stream']``)."""

UINT32 = 1 << 32
LAPLACE_BOUND = 16.7
"""A bound on ``|L|`` for every unit-scale variable: ``-log(2**-24) = 16.6355...``, rounded up."""

_MASK32 = UINT32 - 1
_M0, _M1 = 0xD2511F53, 0xCD9E8D57  # Philox4x32 multipliers
_W0, _W1 = 0x9E3779B9, 0xBB67AE85  # Weyl key increments


class Tag(IntEnum):
    """The third counter word: which use of a seed a copy belongs to (its streams never overlap)."""

    SMOOTHING = 0  #: noisy copies of smoothing (``index``: the data-set index)
    TRAINING = 1  #: training noise (``index``: the global step; ``copy``: the row in the batch)
    EVALUATION = 2  #: noisy test accuracy during training (``index``: the epoch; ``copy``: the test image)


def _f32(bits: int) -> float:
    """The float32 with these bits, as a Python float (exact)."""
    return struct.unpack("<f", struct.pack("<I", bits))[0]


# float32 constants of laplace_from_words (the compiled kernel holds the same bit patterns)
_SQRT2 = _f32(0x3FB504F3)
_LN2_HI, _LN2_LO = _f32(0x3F317200), _f32(0x35BFBE8E)  # ln 2 = hi + lo; hi * E is exact for |E| < 256
_C11, _C9, _C7, _C5, _C3 = (_f32(b) for b in (0x3E3A2E8C, 0x3E638E39, 0x3E924925, 0x3ECCCCCD, 0x3F2AAAAB))


def _mulhilo(x: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32-bit halves of ``m * x`` for uint32 values held in int64 (no overflow)."""
    a = (x >> 16) * m  # < 2**48
    b = (x & 0xFFFF) * m  # < 2**48
    hi = (a + (b >> 16)) >> 16
    lo = (((a & 0xFFFF) << 16) + b) & _MASK32
    return hi, lo


def philox4x32_10(
    key: tuple[int | torch.Tensor, int | torch.Tensor], counter: tuple[int | torch.Tensor, ...]
) -> torch.Tensor:
    """Philox4x32-10 of ``counter`` under ``key``, as int64 words in [0, 2**32), shape ``(..., 4)``.

    Parameters
    ----------
    key : (int or Tensor, int or Tensor)
        The two key words; tensors (int64) broadcast with the counter words.
    counter : four ints or Tensors
        The four counter words ``(c0, c1, c2, c3)``; at least one must be an int64 tensor, which
        fixes the device and the (broadcast) shape.
    """
    like = next(c for c in (*counter, *key) if isinstance(c, torch.Tensor))
    x0, x1, x2, x3 = (torch.as_tensor(c, dtype=torch.int64, device=like.device) for c in counter)
    x0, x1, x2, x3 = torch.broadcast_tensors(x0, x1, x2, x3)
    k0, k1 = key
    for _ in range(10):
        hi0, lo0 = _mulhilo(x0, _M0)
        hi1, lo1 = _mulhilo(x2, _M1)
        x0, x1, x2, x3 = hi1 ^ x1 ^ k0, lo1, hi0 ^ x3 ^ k1, lo0
        k0, k1 = (k0 + _W0) & _MASK32, (k1 + _W1) & _MASK32
    return torch.stack((x0, x1, x2, x3), dim=-1)


def check_address(seed: int, index_range: tuple[int, int], copy_range: tuple[int, int]) -> None:
    """Raise ``ValueError`` unless the seed and the index and copy ranges (``[lo, hi)``) fit 32 bits."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < UINT32:
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    for name, (lo, hi) in (("index", index_range), ("copy", copy_range)):
        if not 0 <= lo <= hi <= UINT32:
            raise ValueError(f"{name} numbers [{lo}, {hi}) must lie in [0, 2**32)")


def stream_words(index: torch.Tensor, copy: torch.Tensor, seed: int, tag: Tag, blocks: int) -> torch.Tensor:
    """The first ``4 * blocks`` words of each addressed copy, int64 in [0, 2**32), shape ``(N, 4 blocks)``.

    ``index`` and ``copy`` are int64 tensors of shape ``(N,)`` on the device to compute on.
    """
    j = torch.arange(blocks, dtype=torch.int64, device=index.device)
    words = philox4x32_10((seed, index[:, None]), (j, copy[:, None], int(tag), 0))
    return words.reshape(index.shape[0], 4 * blocks)


def laplace_from_words(words: torch.Tensor) -> torch.Tensor:
    """Unit-scale Laplace variables (float32) from int64 words in [0, 2**32), by the inverse CDF.

    ``V = ((w & (2**23 - 1)) + 1/2) 2**-23`` and ``log V = E ln 2 + log m`` with ``V = 2**E m``,
    ``m`` in (1/sqrt 2, sqrt 2], and ``log m = 2 atanh(s)``, ``s = (m - 1) / (m + 1)``, summed to the
    ``s**11`` term (truncation below 2e-11). Each line below is one correctly rounded float32
    operation, in the order the compiled kernel performs them, so both give the same bits.
    The result is negated where bit 31 of the word is set.
    """
    u = (words & 0x7FFFFF).to(torch.float32) + 0.5  # exact: u = k + 1/2 < 2**23
    ub = u.view(torch.int32)
    m0 = ((ub & 0x7FFFFF) | 0x3F800000).view(torch.float32)  # u = 2**e m0, m0 in [1, 2)
    big = m0 > _SQRT2
    m = torch.where(big, m0 * 0.5, m0)
    e = ((ub >> 23) - (127 + 23) + big.to(torch.int32)).to(torch.float32)  # V = 2**e m
    s = (m - 1.0) / (m + 1.0)
    z = s * s
    t = _C11 * z
    t = t + _C9
    t = t * z
    t = t + _C7
    t = t * z
    t = t + _C5
    t = t * z
    t = t + _C3
    log_m = (s + s) + (s * z) * t
    log_v = e * _LN2_HI + (log_m + e * _LN2_LO)
    return torch.where(words >= 1 << 31, -log_v, log_v)


def unit_noise(index: torch.Tensor, copy: torch.Tensor, seed: int, tag: Tag, count: int) -> torch.Tensor:
    """The first ``count`` unit-scale Laplace variables of each addressed copy, float32 ``(N, count)``."""
    return laplace_from_words(stream_words(index, copy, seed, tag, (count + 3) // 4)[:, :count])
