"""Local flow plans (Levine & Feizi, Definition 3.1) and their Laplace sampling.

A flow plan ``delta = (vertical, horizontal)`` on an image plane of shape (H, W) has
``vertical`` of shape (H-1, W) and ``horizontal`` of shape (H, W-1); leading
(batch, channel) dimensions are shared with the image. The flow is applied as

    Delta(x, delta)[i, j] = x[i, j] + vertical[i, j] - vertical[i-1, j]
                                    + horizontal[i, j] - horizontal[i, j-1]

with out-of-range terms equal to 0. A positive ``vertical[i, j]`` moves mass from
pixel (i+1, j) to pixel (i, j); mass is conserved, nothing crosses the border, and
channels never exchange mass (Corollary 2). The result is not clipped.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from wbench._validation import check_finite, check_flow_tensor, check_positive


class FlowPlan(NamedTuple):
    """A local flow plan delta = (vertical, horizontal) (Definition 3.1 of Levine & Feizi).

    Attributes
    ----------
    vertical : torch.Tensor
        Shape ``(..., H-1, W)``; ``vertical[..., i, j]`` is the mass moved from
        pixel (i+1, j) to pixel (i, j).
    horizontal : torch.Tensor
        Shape ``(..., H, W-1)``; ``horizontal[..., i, j]`` is the mass moved from
        pixel (i, j+1) to pixel (i, j).
    """

    vertical: torch.Tensor
    horizontal: torch.Tensor

    @property
    def image_shape(self) -> tuple[int, ...]:
        """The shape ``(..., H, W)`` of the images this plan applies to."""
        *lead, hm1, w = self.vertical.shape
        return (*lead, hm1 + 1, w)

    def l1_norm(self, keep_dims: int = 0) -> torch.Tensor:
        """||delta||_1, summed over all but the first ``keep_dims`` dimensions (Eq. 22).

        ``keep_dims=1`` on a batch of colour plans gives one norm per image, summed
        over its channels as in Corollary 2.
        """
        v = self.vertical.abs().flatten(keep_dims).sum(-1)
        h = self.horizontal.abs().flatten(keep_dims).sum(-1)
        return v + h

    def to(self, *args, **kwargs) -> FlowPlan:
        """Move / cast both parts, as :meth:`torch.Tensor.to`."""
        return FlowPlan(self.vertical.to(*args, **kwargs), self.horizontal.to(*args, **kwargs))


def _check_plan_matches(x: torch.Tensor, plan: FlowPlan) -> None:
    if x.ndim < 2:
        raise ValueError(f"x must have at least 2 dimensions (..., H, W); got shape {tuple(x.shape)}")
    *lead, h, w = x.shape
    want_v, want_h = (*lead, h - 1, w), (*lead, h, w - 1)
    if tuple(plan.vertical.shape) != want_v or tuple(plan.horizontal.shape) != want_h:
        raise ValueError(
            f"flow plan shape mismatch for x of shape {tuple(x.shape)}: expected vertical {want_v} "
            f"and horizontal {want_h}, got {tuple(plan.vertical.shape)} and {tuple(plan.horizontal.shape)}"
        )


def apply_flow_unchecked(x: torch.Tensor, vertical: torch.Tensor, horizontal: torch.Tensor) -> torch.Tensor:
    """Delta(x, delta) without any validation: the hot path for sampling loops.

    Differentiable in all three arguments; stays on the inputs' device.
    """
    out = x.clone()
    out[..., :-1, :] += vertical
    out[..., 1:, :] -= vertical
    out[..., :, :-1] += horizontal
    out[..., :, 1:] -= horizontal
    return out


def apply_flow(x: torch.Tensor, plan: FlowPlan) -> torch.Tensor:
    """Apply a local flow plan: Delta(x, delta) of Definition 3.1 (Levine & Feizi).

    Parameters
    ----------
    x : torch.Tensor
        Images of shape ``(..., H, W)``, any device, a real float dtype (float16, bfloat16,
        float32, float64: the dtype table of :mod:`wbench._validation`); computed in that dtype.
    plan : FlowPlan
        ``vertical`` of shape ``(..., H-1, W)`` and ``horizontal`` of shape ``(..., H, W-1)``,
        real float tensors, cast to ``x``'s dtype.

    Returns
    -------
    torch.Tensor
        ``x[i, j] + v[i, j] - v[i-1, j] + h[i, j] - h[i, j-1]``, not clipped.

    Raises
    ------
    ValueError
        If ``x`` or a part of the plan is not a torch tensor of a real float dtype (numpy arrays,
        bools, integers, which would truncate a fractional flow, complex), on shape mismatch, or on
        NaN / inf in ``x`` or the plan.
    """
    if not isinstance(plan, FlowPlan):
        raise ValueError(f"plan must be a FlowPlan, got {type(plan).__name__}")
    check_flow_tensor("x", x)
    check_flow_tensor("flow plan vertical", plan.vertical)
    check_flow_tensor("flow plan horizontal", plan.horizontal)
    _check_plan_matches(x, plan)
    check_finite("x", x)
    check_finite("flow plan vertical", plan.vertical)
    check_finite("flow plan horizontal", plan.horizontal)
    return apply_flow_unchecked(x, plan.vertical.to(x.dtype), plan.horizontal.to(x.dtype))


def compose_flows(a: FlowPlan, b: FlowPlan) -> FlowPlan:
    """The plan a + b, so that ``Delta(Delta(x, a), b) == Delta(x, a + b)`` (Eq. 6)."""
    if a.vertical.shape != b.vertical.shape or a.horizontal.shape != b.horizontal.shape:
        raise ValueError(f"cannot compose flow plans of image shapes {a.image_shape} and {b.image_shape}")
    return FlowPlan(a.vertical + b.vertical, a.horizontal + b.horizontal)


def zero_flow(
    image_shape: tuple[int, ...],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> FlowPlan:
    """The all-zero plan for images of shape ``(..., H, W)``."""
    *lead, h, w = image_shape
    return FlowPlan(
        torch.zeros(*lead, h - 1, w, dtype=dtype, device=device),
        torch.zeros(*lead, h, w - 1, dtype=dtype, device=device),
    )


_MANTISSA_MASK = (1 << 23) - 1  # bits 0-22: the magnitude (a float32 mantissa)
_SIGN_BIT = -(1 << 31)  # int32 0x80000000: bit 31, the sign
_ONE_BITS = 0x3F800000  # float32 1.0
_GRID_OFFSET = 1.0 - 2.0**-24  # f - offset = (k + 1/2) / 2**23 exactly (Sterbenz), f in [1, 2)


def laplace_from_words(
    words: torch.Tensor,
    scale: float | torch.Tensor = 1.0,
    out: torch.Tensor | None = None,
    sign_buffer: torch.Tensor | None = None,
) -> torch.Tensor:
    """Laplace draws of scale ``b`` from uniformly random int32 ``words``, in place (``words`` is consumed).

    With ``k = words & (2**23 - 1)`` uniform on {0, ..., 2**23 - 1}, setting the float32 exponent
    bits gives ``f = 1 + k / 2**23``, and ``V = f - (1 - 2**-24) = (k + 1/2) / 2**23`` (exact) is
    uniform on a grid in (0, 1) symmetric about 1/2, so ``-log V`` is Exp(1) (inverse CDF). Bit 31 of
    the word, independent of ``k``, flips the sign of ``log V``; as Exp(1) with a fair random sign,
    ``b * (+-log V)`` is Laplace with scale ``b``: an inverse-CDF sampler on a 2**-23 grid, every
    draw finite (``|draw| <= 16.6 b``), using only in-place bit operations on the words, which
    :func:`uniform_words` takes from ``torch.Tensor.random_`` on full-range int64 draws (about half
    the cost of ``torch.rand`` on the CPU).

    Parameters
    ----------
    words : torch.Tensor
        int32 tensor of i.i.d. uniform words (all 32 bits); overwritten.
    scale : float or torch.Tensor
        The Laplace scale ``b = std / sqrt(2)`` (a 0-d tensor stays on the device). ``1.0`` skips
        the multiplication, for callers that fold ``b`` into a later operation.
    out : torch.Tensor, optional
        Destination of another float dtype and ``words``' shape; default: float32 in ``words``' memory.
    sign_buffer : torch.Tensor, optional
        Contiguous int32 scratch space of ``words``' shape, reused across calls (no page faults).
    """
    sign = torch.bitwise_and(words, _SIGN_BIT, out=sign_buffer)
    words.bitwise_and_(_MANTISSA_MASK).bitwise_or_(_ONE_BITS)
    draws = words.view(torch.float32).sub_(_GRID_OFFSET)  # V in (0, 1), exact
    if out is None:
        draws.log_()  # log V < 0: float32 sign bit (bit 31) set
        words.bitwise_xor_(sign)  # a fair random sign
    else:
        draws = out.copy_(draws).log_()
        draws.copysign_(sign.view(torch.float32))  # the sign words read as +0.0 / -0.0
    if not (isinstance(scale, float) and scale == 1.0):
        draws.mul_(scale)
    return draws


class RandomWords:
    """A stream of i.i.d. uniformly random 64-bit words on one device, seeded from a ``torch.Generator``.

    On CUDA, :meth:`fill_` is ``out.random_`` over the full int64 range (Philox). On the CPU,
    torch's generator is a sequential Mersenne Twister that costs about 4 ns per word; there
    the words come from numpy's SFC64 bit generator (``random_raw``, about twice as fast),
    seeded once with a 64-bit draw from ``generator``. Either way a seeded ``generator`` gives
    reproducible words, and on the CPU consecutive fills continue one stream, so filling ``a``
    words then ``b`` words gives the same words as filling ``a + b`` at once.
    """

    def __init__(self, generator: torch.Generator | None = None, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.generator = generator
        self._bitgen = None
        if self.device.type == "cpu":
            seed = int(torch.randint(0, 2**62, (), dtype=torch.int64, generator=generator))
            self._bitgen = np.random.SFC64(seed)

    def fill_(self, out: torch.Tensor) -> torch.Tensor:
        """Fill the int64 tensor ``out`` (on this stream's device) with the next words; return it."""
        if out.dtype != torch.int64 or out.device.type != self.device.type:
            raise ValueError(f"out must be an int64 tensor on {self.device}, got {out.dtype} on {out.device}")
        if self._bitgen is None:
            return out.random_(-(2**63), None, generator=self.generator)
        raw = self._bitgen.random_raw(out.numel()).view(np.int64)
        return out.copy_(torch.from_numpy(raw).view(out.shape))


def uniform_words(
    n: int, *, generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """``n`` i.i.d. uniformly random int32 words (all 32 bits), two per 64-bit :class:`RandomWords` word."""
    words = torch.empty((n + 1) // 2, dtype=torch.int64, device=device)
    return RandomWords(generator, words.device).fill_(words).view(torch.int32)[:n]


def laplace_noise(
    shape: tuple[int, ...],
    sigma: float,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """I.i.d. Laplace noise with standard deviation ``sigma`` (scale ``b = sigma / sqrt(2)``).

    Inverse-CDF sampling from 32 random bits per variable (:func:`laplace_from_words`), drawn on
    ``device`` with ``generator`` (which must live on that device). Every draw is finite
    (``|draw| <= 16.6 b``), as with the float sampler behind ``torch.Tensor.exponential_``.
    """
    check_positive("sigma", sigma)
    n = math.prod(shape)
    words = uniform_words(n, generator=generator, device=device)
    out = None if dtype == torch.float32 else torch.empty(n, dtype=dtype, device=device)
    return laplace_from_words(words, sigma / math.sqrt(2.0), out).view(shape)


def sample_laplace_flow(
    image_shape: tuple[int, ...],
    sigma: float,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> FlowPlan:
    """Draw a flow plan with every variable i.i.d. Laplace of std ``sigma`` (Eq. 33's L(sigma)).

    Parameters
    ----------
    image_shape : tuple of int
        ``(..., H, W)``: leading dims give independent draws (one per image and channel).
    sigma : float
        Standard deviation of each flow variable, in units of normalised mass.
    generator : torch.Generator, optional
        Seeded generator on ``device`` for reproducible draws.
    """
    if len(image_shape) < 2 or min(image_shape[-2:]) < 1:
        raise ValueError(f"image_shape must be (..., H, W) with H, W >= 1; got {image_shape}")
    *lead, h, w = image_shape
    nv, nh = math.prod((*lead, h - 1, w)), math.prod((*lead, h, w - 1))
    flat = laplace_noise((nv + nh,), sigma, generator=generator, dtype=dtype, device=device)
    return FlowPlan(flat[:nv].view(*lead, h - 1, w), flat[nv:].view(*lead, h, w - 1))
