"""Validation and behaviour of FlowPlan, apply_flow (wbench.flow) and sample_laplace_flow (wbench.noise)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wbench import FlowPlan, apply_flow
from wbench.flow import compose_flows, zero_flow
from wbench.noise import sample_laplace_flow


def _plan(lead=(), h=4, w=5, dtype=torch.float64, seed=0):
    return sample_laplace_flow((*lead, h, w), 0.1, seed=seed, dtype=dtype)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_apply_flow_rejects_nonfinite_image(bad):
    x = torch.rand(4, 5, dtype=torch.float64)
    x[1, 2] = bad
    with pytest.raises(ValueError, match="x contains NaN or inf"):
        apply_flow(x, _plan())


@pytest.mark.parametrize("part", ["vertical", "horizontal"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_apply_flow_rejects_nonfinite_plan(part, bad):
    plan = _plan()
    getattr(plan, part)[0, 0] = bad
    with pytest.raises(ValueError, match=f"flow plan {part} contains NaN or inf"):
        apply_flow(torch.rand(4, 5, dtype=torch.float64), plan)


def test_apply_flow_rejects_shape_mismatch_and_bad_types():
    x = torch.rand(2, 4, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match="flow plan shape mismatch"):
        apply_flow(x, _plan())  # plan without the leading dim
    with pytest.raises(ValueError, match="flow plan shape mismatch"):
        apply_flow(x, _plan((2,), h=5, w=4))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        apply_flow(torch.rand(5), _plan())
    with pytest.raises(ValueError, match="plan must be a FlowPlan"):
        apply_flow(x, (torch.zeros(2, 3, 5), torch.zeros(2, 4, 4)))


def test_apply_flow_is_linear_and_accepts_negative_values():
    """Delta is defined for any real image (flows are composed and not clipped), negative entries included."""
    x = torch.tensor([[0.0, -1.0], [2.0, 0.5]], dtype=torch.float64)
    plan = FlowPlan(
        torch.tensor([[0.5, -0.25]], dtype=torch.float64), torch.tensor([[1.0], [0.0]], dtype=torch.float64)
    )
    expected = torch.tensor([[1.5, -2.25], [1.5, 0.75]], dtype=torch.float64)
    torch.testing.assert_close(apply_flow(x, plan), expected, rtol=0, atol=0)


def test_apply_flow_casts_plan_to_image_dtype_and_keeps_numpy_out():
    x = torch.rand(3, 4, 5, dtype=torch.float32, generator=torch.Generator().manual_seed(1))
    y = apply_flow(x, _plan((3,)))
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.sum((-2, -1)), x.sum((-2, -1)), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"x must be a torch\.Tensor, got ndarray \(convert with torch"):
        apply_flow(np.ones((4, 5)), _plan())  # numpy is not accepted by the torch-only operator


@pytest.mark.parametrize("sigma", [0.0, -0.1, math.nan, math.inf, "0.1", None])
def test_sample_laplace_flow_rejects_bad_sigma(sigma):
    with pytest.raises(ValueError, match="sigma must be a finite number > 0"):
        sample_laplace_flow((4, 5), sigma, seed=0)


@pytest.mark.parametrize("shape", [(5,), (), (0, 5), (4, 0)])
def test_sample_laplace_flow_rejects_bad_shape(shape):
    with pytest.raises(ValueError, match="image_shape must be"):
        sample_laplace_flow(shape, 0.1, seed=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sample_laplace_flow_shapes_seeding_and_std(dtype):
    plan = _plan((2, 3), h=6, w=7, dtype=dtype, seed=4)
    assert plan.vertical.shape == (2, 3, 5, 7) and plan.horizontal.shape == (2, 3, 6, 6)
    assert plan.vertical.dtype == dtype and plan.image_shape == (2, 3, 6, 7)
    again = _plan((2, 3), h=6, w=7, dtype=dtype, seed=4)
    torch.testing.assert_close(plan.vertical, again.vertical, rtol=0, atol=0)
    assert not torch.equal(plan.vertical, _plan((2, 3), h=6, w=7, dtype=dtype, seed=5).vertical)
    big = sample_laplace_flow((200, 200), 0.3, seed=0, dtype=dtype)
    draws = torch.cat([big.vertical.ravel(), big.horizontal.ravel()]).double()
    # 79,600 draws: the sample std of a Laplace has relative s.e. ~ sqrt(5/4 / n) = 0.4%; 5 s.e. = 2%
    assert float(draws.std()) == pytest.approx(0.3, rel=0.02)
    assert torch.isfinite(draws).all()


def test_flowplan_norm_shapes_and_compose_validation():
    plan = _plan((2, 3))
    per_image = plan.l1_norm(keep_dims=1)
    assert per_image.shape == (2,)
    torch.testing.assert_close(per_image.sum(), plan.l1_norm(), rtol=1e-12, atol=0)
    assert plan.to(torch.float32).vertical.dtype == torch.float32
    with pytest.raises(ValueError, match="cannot compose flow plans"):
        compose_flows(plan, _plan((2,)))
    z = zero_flow((2, 3, 4, 5), dtype=torch.float64)
    torch.testing.assert_close(compose_flows(plan, z).vertical, plan.vertical, rtol=0, atol=0)
