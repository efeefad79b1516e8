"""W1 at the edges of float64: overflow (issue 9, item 10) and dynamic range (item 12)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wbench import apply_flow, optimal_flow_plan, w1
from wbench.transport import min_flow_norm, solve_ling_okada

SOLVERS = ("pot", "lp", "network")
RTOL_W1 = 1e-9  # the documented agreement of the three solvers (README, ``w1`` docstring)


def _w1_fn(solver):
    return lambda x, y: w1(x, y, solver=solver)


PAIR_FUNCTIONS = {
    **{f"w1[{s}]": _w1_fn(s) for s in SOLVERS},
    "optimal_flow_plan[lp]": lambda x, y: optimal_flow_plan(x, y, solver="lp")[1],
    "optimal_flow_plan[network]": lambda x, y: optimal_flow_plan(x, y, solver="network")[1],
    "min_flow_norm": lambda x, y: min_flow_norm(x, y)[1],
    "solve_ling_okada": lambda x, y: solve_ling_okada(x, y)[0],
}


@pytest.mark.parametrize("fn", list(PAIR_FUNCTIONS))
def test_mass_that_overflows_float64_is_a_value_error(fn):
    x, y = np.zeros((3, 3)), np.zeros((3, 3))
    x[0, 0] = x[2, 2] = 1e308  # finite pixels whose sum is not
    y[1, 1] = y[0, 1] = 1e308
    with pytest.raises(ValueError, match=r"total mass of x overflows float64"):
        PAIR_FUNCTIONS[fn](x, y)


@pytest.mark.parametrize("fn", list(PAIR_FUNCTIONS))
def test_w1_that_overflows_float64_is_a_value_error(fn):
    x, y = np.zeros((3, 3)), np.zeros((3, 3))
    x[0, 0], y[2, 2] = 1.5e308, 1.5e308  # finite mass moved over distance 4: W1 = 6e308
    with pytest.raises(ValueError, match=r"W1 overflows float64"):
        PAIR_FUNCTIONS[fn](x, y)


def test_w1_that_overflows_with_l2_ground_is_a_value_error():
    x, y = np.zeros((3, 3)), np.zeros((3, 3))
    x[0, 0], y[2, 2] = 1.5e308, 1.5e308
    with pytest.raises(ValueError, match=r"W1 overflows float64"):
        w1(x, y, ground="l2")


def test_channel_sum_that_overflows_is_a_value_error():
    x, y = np.zeros((2, 3, 3)), np.zeros((2, 3, 3))
    x[:, 0, 0], y[:, 0, 1] = 1.2e308, 1.2e308  # each channel W1 = 1.2e308, their sum is not finite
    for solver in SOLVERS:
        with pytest.raises(ValueError, match=r"W1 overflows float64"):
            w1(x, y, solver=solver)


def test_24_orders_of_magnitude_in_one_image():
    """Item 12: 1e12 stays put and 1e-12 moves one pixel; every solver returns 1e-12."""
    x, y = np.zeros((3, 3)), np.zeros((3, 3))
    x[0, 0] = y[0, 0] = 1e12
    x[2, 2], y[2, 1] = 1e-12, 1e-12
    for fn, f in PAIR_FUNCTIONS.items():
        assert f(x, y) == pytest.approx(1e-12, rel=RTOL_W1), fn
    for solver in ("lp", "network"):
        plan, value = optimal_flow_plan(x, y, solver=solver)
        assert float(plan.l1_norm()) == pytest.approx(1e-12, rel=RTOL_W1)
        moved = apply_flow(torch.from_numpy(x), plan) - torch.from_numpy(x)
        expected = torch.from_numpy(y - x)
        torch.testing.assert_close(moved, expected, rtol=0, atol=1e-12 * RTOL_W1)


@pytest.mark.parametrize("background", [2.0**20, 2.0**30])
def test_w1_ignores_a_common_background_however_large(background):
    """W1 depends on x - y only (Kantorovich-Rubinstein): adding the same mass to both changes nothing.

    ``y`` is a permutation of ``x`` with values on a 2**-10 grid, so ``x + B`` and ``y + B`` and their
    masses are exact in float64 and the expected value is the same number for every solver.
    """
    rng = np.random.default_rng(7)
    x = rng.integers(0, 1024, size=(4, 5)) / 1024.0
    y = rng.permutation(x.ravel()).reshape(4, 5)
    expected = w1(x, y, solver="pot")
    assert expected > 0.5
    for fn, f in PAIR_FUNCTIONS.items():
        assert f(x + background, y + background) == pytest.approx(expected, rel=RTOL_W1), fn
