"""Smoothing noise in mass space (Levine & Feizi, Eq. 33 and Section 4): the one home of sampling.

For an image ``x`` with total mass ``m`` (one scalar per image: the sum over all of its channels
and pixels) both perturbations act on the normalised image ``x / m`` and multiply the result
back by ``m`` before it reaches the network:

* Wasserstein: ``m * Delta(x / m, delta)``, every flow variable i.i.d. Laplace with std ``sigma``
  (per-channel plans, Corollary 2);
* Laplace baseline: ``m * (x / m + eps)``, ``eps`` i.i.d. Laplace with std ``sigma``.

``sigma`` is in units of normalised mass. Nothing is clipped. Since Delta is affine in ``x`` and
linear in ``delta``, ``m * Delta(x / m, delta) = Delta(x, m * delta)``: the mass is folded into
the Laplace scale ``b = m sigma / sqrt(2)`` (:func:`noise_scale`) and the image is never divided.

Every draw comes from the keyed stream of :mod:`wbench.noise_stream`: copy ``k`` under
``(seed, index, tag)`` is ``x + b * div(L)`` (or ``x + b * L``) with ``L`` the copy's unit Laplace
variables, whatever the device, the build, the thread count or the batch it is drawn in.
:func:`noisy_copies` computes it with the compiled CPU operator (:mod:`wbench.fastnoise`) where
that applies and with the portable torch implementation elsewhere; both give the same bits.
Smoothing (:mod:`wbench.smoothing`) keys copies by the image's data-set index; training
(:func:`perturb`) by the step, each row of a batch taking its own copy.
"""

from __future__ import annotations

import math

import torch

from wbench import fastnoise
from wbench._validation import check_finite, check_nonnegative, check_positive
from wbench.flow import FlowPlan, add_flow_
from wbench.noise_stream import LAPLACE_BOUND, Tag, check_address, unit_noise
from wbench.options import Noise, parse_option


def image_mass(x: torch.Tensor) -> torch.Tensor:
    """Total mass per image of a batch ``(B, C, H, W)``, shaped ``(B, 1, 1, 1)`` for broadcasting."""
    return x.sum(dim=(1, 2, 3), keepdim=True)


def check_mass_images(x: torch.Tensor, name: str = "x") -> None:
    """Raise unless ``x`` is a finite, non-negative ``(B, C, H, W)`` batch with positive mass per image.

    This synchronises with the device: call it once per batch, never per sample.
    """
    if x.ndim != 4:
        raise ValueError(f"{name} must be a batch (B, C, H, W); got shape {tuple(x.shape)}")
    check_finite(name, x)
    check_nonnegative(name, x)
    if bool((image_mass(x) <= 0).any()):
        raise ValueError(f"{name} has an image with zero total mass; mass normalisation is undefined")


def noise_scale(x: torch.Tensor, sigma: float, *, check: bool = True) -> torch.Tensor:
    """The Laplace scale ``b = m sigma / sqrt(2)`` of each image's mass-space noise, ``(B,)`` in ``x.dtype``.

    The mass ``m`` of each image of ``x`` ``(B, C, H, W)`` is summed in float64.

    Parameters
    ----------
    check : bool
        Raise ``ValueError`` (one device sync) where the noise cannot be represented in ``x.dtype``:

        * overflow: ``b``, or a copy's bound ``max x + 4 * 16.7 b`` (four flow terms of at most
          :data:`~wbench.noise_stream.LAPLACE_BOUND` ``b`` each), exceeds the dtype's largest number;
        * underflow: ``b`` is below the dtype's smallest normal number, or below the dtype's
          resolution at the image's largest pixel (``b < eps * max x``), where adding the noise
          rounds most of it away and the copies are not the smoothing distribution.
    """
    mass = x.sum(dim=(1, 2, 3), dtype=torch.float64)
    scale = (mass * (sigma / math.sqrt(2.0))).to(x.dtype)
    if check:
        _check_scale(x, scale, sigma)
    return scale


def _check_scale(x: torch.Tensor, scale: torch.Tensor, sigma: float) -> None:
    info = torch.finfo(x.dtype)
    top = x.amax(dim=(1, 2, 3)).to(torch.float64)
    b = scale.to(torch.float64)
    stats = torch.stack((b.max(), (top + 4 * LAPLACE_BOUND * b).max(), (b / (info.eps * top)).min(), b.min()))
    b_max, reach, resolution, b_min = stats.tolist()
    if not (math.isfinite(b_max) and reach <= info.max):
        raise ValueError(
            f"sigma * mass overflows {x.dtype}: with sigma={sigma!r} the noise scale is {b_max:.3g} and "
            f"noisy copies may reach {reach:.3g} > {info.max:.3g}; use a smaller sigma or float64"
        )
    if b_min < info.tiny or resolution < 1.0:
        floor = "the smallest normal number" if b_min < info.tiny else "the resolution at the largest pixel"
        raise ValueError(
            f"the smoothing noise underflows in {x.dtype}: its Laplace scale mass * sigma / sqrt(2) is "
            f"{b_min:.3g}, below {floor} of {x.dtype}, so noisy copies round back to the image; "
            "use a larger sigma or float64"
        )


def noisy_copies(
    x: torch.Tensor,
    scale: torch.Tensor,
    *,
    seed: int,
    index: torch.Tensor,
    copy: torch.Tensor,
    tag: Tag,
    noise: Noise,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Noisy copies ``Delta(x, b L)`` (flow) or ``x + b L`` (pixel) addressed in the noise stream.

    Row ``g`` of the result perturbs ``x[g]`` (or the single image ``x[0]``) with scale
    ``scale[g]`` (or ``scale[0]``) and the unit Laplace variables ``L`` of copy ``copy[g]`` under
    ``(seed, index[g], tag)`` (:mod:`wbench.noise_stream`; ``index`` and ``copy`` may also hold
    one entry, shared by all rows). The flow stencil is :func:`wbench.flow.add_flow_`.

    Parameters
    ----------
    x : torch.Tensor
        ``(1 or N, C, H, W)`` images.
    scale : torch.Tensor
        ``(1 or N,)`` Laplace scales in ``x.dtype`` (:func:`noise_scale`).
    index, copy : torch.Tensor
        int64 ``(1 or N,)`` stream addresses, validated by the caller.
    out : torch.Tensor, optional
        Contiguous ``(N, C, H, W)`` destination (reused buffers); not used when ``x`` needs grad.

    Returns
    -------
    torch.Tensor
        ``(N, C, H, W)``: on the CPU the same bits from the compiled operator and from the
        portable implementation.
    """
    n = max(x.shape[0], scale.shape[0], index.shape[0], copy.shape[0])
    _, c, h, w = x.shape
    flow = noise is Noise.WASSERSTEIN
    grad = x.requires_grad and torch.is_grad_enabled()
    if out is None or grad:
        out = torch.empty((n, c, h, w), dtype=x.dtype, device=x.device)
    if fastnoise.usable(x) and index.shape[0] == copy.shape[0] == n:
        cpu = torch.device("cpu")
        return fastnoise.noisy_copies(
            x.contiguous(),
            scale.contiguous(),
            index.to(cpu),
            copy.to(cpu),
            seed=seed,
            tag=int(tag),
            flow=flow,
            out=out,
        )
    # the portable implementation: the same operations in the same order
    n_v = c * (h - 1) * w
    count = n_v + c * h * w if flow else c * h * w
    noise_rows = unit_noise(index.to(x.device), copy.to(x.device), seed, tag, count).to(x.dtype)
    d = noise_rows * scale.view(-1, 1)  # rounded products b * L, (N, count)
    base = x.expand(n, c, h, w)
    res = base.clone(memory_format=torch.contiguous_format) if grad else out.copy_(base)
    if not flow:
        return res.add_(d.view(n, c, h, w))
    return add_flow_(res, d[:, :n_v].view(n, c, h - 1, w), d[:, n_v:].view(n, c, h, w)[..., : w - 1])


def perturb(
    x: torch.Tensor,
    sigma: float,
    noise: Noise | str = Noise.WASSERSTEIN,
    *,
    seed: int,
    index: int,
    first_copy: int = 0,
    tag: Tag = Tag.TRAINING,
    shared_across_batch: bool = False,
    check: bool = True,
) -> torch.Tensor:
    """One noise draw per image of a batch ``(B, C, H, W)``, in mass space (Eq. 33), from the stream.

    Image ``r`` of the batch takes copy ``first_copy + r`` under ``(seed, index, tag)``. Training
    passes its global step as ``index`` (:attr:`Tag.TRAINING`), so every step draws fresh noise;
    a data-parallel run gives rank ``q`` with local batch ``B`` the copies from ``q * B`` on, so
    no two ranks share a draw. The noise depends only on these numbers, never on the device,
    the build or the thread count.

    Parameters
    ----------
    x : torch.Tensor
        Non-negative images, ``(B, C, H, W)``.
    sigma : float
        Std of each Laplace variable (flow variable or pixel), in normalised mass.
    noise : {"wasserstein", "laplace"}
        Flow-space noise (Eq. 33) or the i.i.d. pixel baseline.
    seed, index, first_copy : int
        The stream address (unsigned 32-bit).
    tag : Tag
        :attr:`Tag.TRAINING`, or :attr:`Tag.EVALUATION` for noisy test accuracy.
    shared_across_batch : bool
        Reuse copy ``first_copy`` for every image of the batch, scaled by each image's mass (the
        training shortcut of Levine & Feizi, Appendix B). Off by default.
    check : bool
        Validate ``x`` and the noise scale (:func:`noise_scale`; a device sync). Hot loops
        validate once and pass ``False``.
    """
    noise = parse_option(Noise, noise, "noise")
    check_positive("sigma", sigma)
    rows = 1 if shared_across_batch else x.shape[0]
    check_address(seed, (index, index + 1), (first_copy, first_copy + rows))
    if check:
        check_mass_images(x)
    scale = noise_scale(x, sigma, check=check)
    dev = x.device if not fastnoise.usable(x) else torch.device("cpu")
    idx = torch.full((rows,), index, dtype=torch.int64, device=dev)
    copies = torch.arange(first_copy, first_copy + rows, dtype=torch.int64, device=dev)
    return noisy_copies(x, scale, seed=seed, index=idx, copy=copies, tag=tag, noise=noise)


def sample_laplace_flow(
    image_shape: tuple[int, ...],
    sigma: float,
    *,
    seed: int,
    index: int = 0,
    first_copy: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> FlowPlan:
    """Flow plans with every variable i.i.d. Laplace of std ``sigma`` (Eq. 33's L(sigma)), from the stream.

    Parameters
    ----------
    image_shape : tuple of int
        ``(H, W)``, ``(C, H, W)`` or ``(..., C, H, W)``: the leading dimensions number the plans,
        which are copies ``first_copy, first_copy + 1, ...`` under ``(seed, index)`` of the
        smoothing stream, so that ``Delta(x, m * plan_k)`` is smoothing's copy ``k`` of an image
        ``x`` of mass ``m`` and data-set index ``index`` (up to float rounding).
    sigma : float
        Standard deviation of each flow variable, in units of normalised mass.
    seed, index, first_copy : int
        The stream address (unsigned 32-bit).
    """
    if len(image_shape) < 2 or min(image_shape[-2:]) < 1:
        raise ValueError(f"image_shape must be (..., H, W) with H, W >= 1; got {image_shape}")
    check_positive("sigma", sigma)
    *lead, h, w = image_shape
    c = lead[-1] if lead else 1
    n = math.prod(lead[:-1])
    check_address(seed, (index, index + 1), (first_copy, first_copy + n))
    idx = torch.full((n,), index, dtype=torch.int64, device=device)
    copies = torch.arange(first_copy, first_copy + n, dtype=torch.int64, device=device)
    n_v = c * (h - 1) * w
    unit = unit_noise(idx, copies, seed, Tag.SMOOTHING, n_v + c * h * w).to(dtype)
    flat = unit * (sigma / math.sqrt(2.0))
    vertical = flat[:, :n_v].reshape(*lead, h - 1, w)
    horizontal = flat[:, n_v:].view(n, c, h, w)[..., : w - 1].reshape(*lead, h, w - 1)
    return FlowPlan(vertical, horizontal)
