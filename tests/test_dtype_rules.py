"""One dtype table for numpy and torch input (issue 9, item 11; wbench._validation.DTYPE_TABLE).

- real floats (float16, bfloat16, float32, float64): accepted everywhere;
- integers: accepted as mass histograms by ``w1`` / ``optimal_flow_plan`` (exact in float64),
  refused by ``apply_flow`` (a fractional plan would be truncated);
- bool, complex and anything else: refused everywhere, numpy and torch alike.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wbench import FlowPlan, apply_flow, optimal_flow_plan, w1
from wbench.transport import min_flow_norm, solve_ling_okada
from wbench.transport.examples import random_pair

HISTOGRAM_FUNCTIONS = {
    "w1[pot]": lambda x, y: w1(x, y, solver="pot"),
    "w1[lp]": lambda x, y: w1(x, y, solver="lp"),
    "w1[network]": lambda x, y: w1(x, y, solver="network"),
    "optimal_flow_plan": optimal_flow_plan,
    "min_flow_norm": min_flow_norm,
    "solve_ling_okada": solve_ling_okada,
}


def _one_hot(dtype_np, value=3):
    x, y = np.zeros((3, 3)), np.zeros((3, 3))
    x[0, 0], y[2, 1] = value, value
    return x.astype(dtype_np), y.astype(dtype_np)


def _both(x, y, backend):
    return (x, y) if backend == "numpy" else (torch.from_numpy(x), torch.from_numpy(y))


@pytest.mark.parametrize("fn", list(HISTOGRAM_FUNCTIONS))
@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", [np.bool_, np.complex64, np.complex128])
def test_bool_and_complex_histograms_are_refused_by_numpy_and_torch(fn, backend, dtype):
    x, y = _both(*_one_hot(dtype, value=1), backend)
    with pytest.raises(ValueError, match=r"x has dtype .*(bool|complex).*; expected a real floating"):
        HISTOGRAM_FUNCTIONS[fn](x, y)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_complex_is_refused_even_with_zero_imaginary_part_and_never_truncated(backend):
    x, y = random_pair(np.random.default_rng(0), (3, 4))
    xc, yc = _both(x + 0j, y + 5j, backend)
    with pytest.raises(ValueError, match="complex"):
        w1(xc, yc)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize(
    "dtype", [np.float16, np.float32, np.float64, np.uint8, np.int16, np.int32, np.int64]
)
def test_real_histograms_are_computed_in_float64_of_their_exact_values(backend, dtype):
    x, y = _one_hot(dtype, value=3)
    expected = 3.0 * 3  # 3 units of mass moved over L1 distance 2 + 1
    for fn in ("w1[pot]", "w1[lp]", "w1[network]"):
        assert HISTOGRAM_FUNCTIONS[fn](*_both(x, y, backend)) == pytest.approx(expected, rel=1e-12)
    plan, value = optimal_flow_plan(*_both(x, y, backend))
    assert plan.vertical.dtype == torch.float64 and value == pytest.approx(expected, rel=1e-12)


def test_bfloat16_tensors_are_accepted_as_floats():
    x, y = _one_hot(np.float32, value=3)
    assert w1(torch.from_numpy(x).bfloat16(), torch.from_numpy(y).bfloat16()) == pytest.approx(9.0, rel=1e-12)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_int64_beyond_float64_precision_is_refused(backend):
    x, y = np.zeros((2, 2), dtype=np.int64), np.zeros((2, 2), dtype=np.int64)
    x[0, 0] = y[1, 1] = 2**53 + 1  # not representable in float64: it would be rounded
    with pytest.raises(ValueError, match=r"exactly representable in float64"):
        w1(*_both(x, y, backend))


def _plan(dtype=torch.float64):
    v = torch.tensor([[0.25, 0.5]], dtype=torch.float64)
    h = torch.tensor([[0.75], [0.0]], dtype=torch.float64)
    return FlowPlan(v.to(dtype), h.to(dtype))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64])
def test_apply_flow_refuses_non_float_images_instead_of_truncating(dtype):
    x = torch.ones(2, 2).to(dtype)
    with pytest.raises(ValueError, match=r"x has dtype .*; expected a real floating dtype"):
        apply_flow(x, _plan())


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex128])
def test_apply_flow_refuses_non_float_plans(dtype):
    with pytest.raises(ValueError, match=r"flow plan vertical has dtype .*; expected a real floating dtype"):
        apply_flow(torch.ones(2, 2), _plan(dtype))


@pytest.mark.parametrize("x", [np.ones((2, 2)), np.ones((2, 2), dtype=bool), True, [[1.0, 1.0], [1.0, 1.0]]])
def test_apply_flow_refuses_numpy_bool_and_lists_with_a_value_error(x):
    with pytest.raises(ValueError, match=r"x must be a torch\.Tensor"):
        apply_flow(x, _plan())


def test_apply_flow_refuses_numpy_plans():
    plan = FlowPlan(np.zeros((1, 2)), np.zeros((2, 1)))
    with pytest.raises(ValueError, match=r"flow plan vertical must be a torch\.Tensor"):
        apply_flow(torch.ones(2, 2), plan)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_apply_flow_computes_in_the_image_dtype(dtype):
    x = torch.ones(2, 2, dtype=dtype)
    out = apply_flow(x, _plan())
    assert out.dtype == dtype
    expected = torch.tensor([[2.0, 0.75], [0.75, 0.5]], dtype=torch.float64)  # exact in every float dtype
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=0)
