"""Local flow plans (Levine & Feizi, Definition 3.1): the plan, its application and composition.

A flow plan ``delta = (vertical, horizontal)`` on an image plane of shape (H, W) has
``vertical`` of shape (H-1, W) and ``horizontal`` of shape (H, W-1); leading
(batch, channel) dimensions are shared with the image. The flow is applied as

    Delta(x, delta)[i, j] = x[i, j] + vertical[i, j] - vertical[i-1, j]
                                    + horizontal[i, j] - horizontal[i, j-1]

with out-of-range terms equal to 0. A positive ``vertical[i, j]`` moves mass from
pixel (i+1, j) to pixel (i, j); mass is conserved, nothing crosses the border, and
channels never exchange mass (Corollary 2). The result is not clipped. Sampling random plans
belongs to :mod:`wbench.noise`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from wbench._validation import check_finite, check_flow_tensor


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


def add_flow_(out: torch.Tensor, vertical: torch.Tensor, horizontal: torch.Tensor) -> torch.Tensor:
    """The stencil of Definition 3.1, in place: ``out`` becomes ``Delta(out, (vertical, horizontal))``.

    Four rounded additions per pixel, in this order: ``+ v[i, j]``, ``- v[i-1, j]``, ``+ h[i, j]``,
    ``- h[i, j-1]`` (the compiled noise operator of :mod:`wbench.fastnoise` performs the same ones).
    No validation; differentiable when ``out`` is not a leaf.
    """
    out[..., :-1, :] += vertical
    out[..., 1:, :] -= vertical
    out[..., :, :-1] += horizontal
    out[..., :, 1:] -= horizontal
    return out


def apply_flow_unchecked(x: torch.Tensor, vertical: torch.Tensor, horizontal: torch.Tensor) -> torch.Tensor:
    """Delta(x, delta) without any validation: the hot path for sampling loops.

    Differentiable in all three arguments; stays on the inputs' device.
    """
    return add_flow_(x.clone(), vertical, horizontal)


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
