"""Smoothing noise in mass space (Levine & Feizi, Eq. 33 and Section 4).

For an image ``x`` with total mass ``m`` (one scalar per image: the sum over all of
its channels and pixels) both perturbations act on the normalised image ``x / m``
and multiply the result back by ``m`` before it reaches the network:

* Wasserstein: ``m * Delta(x / m, delta)``, every flow variable i.i.d. Laplace with
  std ``sigma`` (per channel plans, Corollary 2);
* Laplace baseline: ``m * (x / m + eps)``, ``eps`` i.i.d. Laplace with std ``sigma``.

``sigma`` is in units of normalised mass. Nothing is clipped.
"""

from __future__ import annotations

import math

import torch

from wbench import fastnoise
from wbench._validation import check_finite, check_nonnegative, check_positive
from wbench.flow import apply_flow_unchecked, laplace_noise, sample_laplace_flow
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


def perturb(
    x: torch.Tensor,
    sigma: float,
    noise: Noise | str = Noise.WASSERSTEIN,
    *,
    generator: torch.Generator | None = None,
    shared_across_batch: bool = False,
    check: bool = True,
) -> torch.Tensor:
    """One noise draw per image of a batch ``(B, C, H, W)``, in mass space.

    Parameters
    ----------
    x : torch.Tensor
        Non-negative images, ``(B, C, H, W)``.
    sigma : float
        Std of each Laplace variable (flow variable or pixel), in normalised mass.
    noise : {"wasserstein", "laplace"}
        Flow-space noise (Eq. 33) or the i.i.d. pixel baseline.
    generator : torch.Generator, optional
        Seeded generator on ``x.device``.
    shared_across_batch : bool
        Reuse one draw for every image of the batch (the training shortcut of
        Levine & Feizi, Appendix B). Off by default: each image gets its own draw.
    check : bool
        Validate ``x`` (a device sync). Hot loops validate once and pass ``False``.

    Notes
    -----
    On the CPU in float32 (and unless ``x`` requires grad, or the draw is shared) the noise
    comes from the fused kernel of :mod:`wbench.fastnoise`; elsewhere from
    :func:`wbench.flow.sample_laplace_flow` / :func:`wbench.flow.laplace_noise`. Both draw every
    variable i.i.d. Laplace with std ``sigma``, from different random streams.
    """
    noise = parse_option(Noise, noise, "noise")
    check_positive("sigma", sigma)
    if check:
        check_mass_images(x)
    mass = image_mass(x)
    plain = not (x.requires_grad and torch.is_grad_enabled())  # no graph to keep: in place is fine
    if plain and not shared_across_batch and fastnoise.usable(x):
        # CPU float32: the fused kernel (one Philox stream per call, image i numbered i)
        scale = (mass.reshape(-1) * (sigma / math.sqrt(2.0))).contiguous()
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
        key = fastnoise.random_key(generator)
        return fastnoise.noisy_copies(x.contiguous(), scale, out, key=key, flow=noise is Noise.WASSERSTEIN)
    draw_shape = (1, *x.shape[1:]) if shared_across_batch else tuple(x.shape)
    # m * Delta(x / m, delta) = Delta(x, m * delta) and m * (x / m + eps) = x + m * eps: the mass
    # scales the noise, so the image is never divided and multiplied back
    if noise is Noise.WASSERSTEIN:
        plan = sample_laplace_flow(draw_shape, sigma, generator=generator, dtype=x.dtype, device=x.device)
        if shared_across_batch or not plain:  # shared: one draw broadcast, scaled by each image's mass
            return apply_flow_unchecked(x, plan.vertical * mass, plan.horizontal * mass)
        return apply_flow_unchecked(x, plan.vertical.mul_(mass), plan.horizontal.mul_(mass))
    eps = laplace_noise(draw_shape, sigma, generator=generator, dtype=x.dtype, device=x.device)
    return x + eps * mass if shared_across_batch or not plain else eps.mul_(mass).add_(x)
