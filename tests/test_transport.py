"""wbench.transport: input validation, input types, sign convention and solver plumbing."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import torch

from wbench import FlowPlan, apply_flow, optimal_flow_plan, w1
from wbench.transport import arcs_from_flow, flow_from_arcs, grid_arcs, min_flow_norm, solve_ling_okada
from wbench.transport.examples import one_hot_pair, random_pair
from wbench.transport.ling_okada import ling_okada_lp, solve_lp_checked
from wbench.transport.network import crop_to_support
from wbench.transport.pot_solver import emd2_checked

SOLVERS = ("pot", "lp", "network")
RTOL_W1 = 1e-9


def _pair(shape=(4, 5), seed=0):
    return random_pair(np.random.default_rng(seed), shape)


def _w1_fn(solver):
    return lambda x, y: w1(x, y, solver=solver)


PAIR_FUNCTIONS = {
    **{f"w1[{s}]": _w1_fn(s) for s in SOLVERS},
    "optimal_flow_plan[lp]": optimal_flow_plan,
    "optimal_flow_plan[network]": lambda x, y: optimal_flow_plan(x, y, solver="network"),
    "min_flow_norm": min_flow_norm,
    "solve_ling_okada": solve_ling_okada,
}


def _corrupt(kind):
    x, y = _pair((2, 4, 5))
    if kind == "nan":
        x[1, 2, 3] = np.nan
    elif kind == "inf":
        y[0, 0, 0] = np.inf
    elif kind == "negative":
        x[0, 1, 1] = -0.1
        x[0, 2, 2] += 0.1  # keeps the mass equal: only the sign is wrong
    elif kind == "unequal":
        y = y * 1.01
    elif kind == "channel-unequal":  # equal total mass, but channel 0 gives 0.1 to channel 1
        x[0, 0, 0] += 0.1
        x[1, 0, 0] += 0.0
        y[1, 0, 0] += 0.1
    return x, y


ERRORS = {
    "nan": "NaN or inf",
    "inf": "NaN or inf",
    "negative": "negative mass",
    "unequal": "unequal mass in channel 0",
    "channel-unequal": "unequal mass in channel 0",
}


@pytest.mark.parametrize("fn", list(PAIR_FUNCTIONS))
@pytest.mark.parametrize("kind", list(ERRORS))
@pytest.mark.parametrize("as_torch", [False, True])
def test_bad_histograms_are_rejected(fn, kind, as_torch):
    x, y = _corrupt(kind)
    if as_torch:
        x, y = torch.from_numpy(x), torch.from_numpy(y)
    with pytest.raises(ValueError, match=ERRORS[kind]):
        PAIR_FUNCTIONS[fn](x, y)


@pytest.mark.parametrize("fn", list(PAIR_FUNCTIONS))
def test_shape_ndim_and_type_errors(fn):
    f = PAIR_FUNCTIONS[fn]
    x, y = _pair((4, 5))
    with pytest.raises(ValueError, match="shape mismatch"):
        f(x, y[:, :4])
    with pytest.raises(ValueError, match="must have 2 or 3 dimensions"):
        f(x.ravel(), y.ravel())
    with pytest.raises(ValueError, match="must have 2 or 3 dimensions"):
        f(x[None, None], y[None, None])
    with pytest.raises(ValueError, match="numpy array or a torch tensor"):
        f(x.tolist(), y.tolist())
    with pytest.raises(ValueError, match="non-empty"):
        f(np.zeros((0, 5)), np.zeros((0, 5)))
    with pytest.raises(ValueError, match="expected a real floating dtype"):
        f(x.astype(complex), y.astype(complex))


def test_unequal_mass_message_names_both_masses():
    x, y = _pair((3, 3))
    with pytest.raises(ValueError, match=r"unequal mass: x has .* y has .*relative tolerance 1e-09"):
        w1(x, 1.5 * y)


def test_unknown_options_and_l2_only_with_pot():
    x, y = _pair()
    with pytest.raises(ValueError, match="unknown ground 'l3'"):
        w1(x, y, ground="l3")
    with pytest.raises(ValueError, match="unknown solver 'sinkhorn'"):
        w1(x, y, solver="sinkhorn")
    with pytest.raises(ValueError, match="unknown solver 'exact'"):
        optimal_flow_plan(x, y, solver="exact")
    with pytest.raises(ValueError, match="solver must be 'lp' or 'network'"):
        optimal_flow_plan(x, y, solver="pot")
    for solver in ("lp", "network"):
        with pytest.raises(ValueError, match="L1 ground only"):
            w1(x, y, ground="l2", solver=solver)


def test_mass_tolerance_follows_dtype():
    x, y = _pair((6, 6))
    y_off = y * (1 + 1e-7)  # inside float32's mass tolerance (1e-5), outside float64's (1e-9)
    with pytest.raises(ValueError, match="unequal mass"):
        w1(x, y_off)
    value = w1(torch.from_numpy(x).float(), torch.from_numpy(y_off).float())
    assert value == pytest.approx(w1(x, y), rel=1e-5)


@pytest.mark.parametrize("solver", SOLVERS)
def test_numpy_torch_and_float32_inputs_agree(solver):
    x, y = _pair((2, 5, 6), seed=3)
    x32, y32 = torch.from_numpy(x).float(), torch.from_numpy(y).float()
    # float32 input is computed in float64 from the float32 values: exactly the numpy float64 of them
    x32_as64, y32_as64 = x32.double().numpy(), y32.double().numpy()
    assert w1(x32, y32, solver=solver) == w1(x32_as64, y32_as64, solver=solver)
    assert w1(x32.numpy(), y32.numpy(), solver=solver) == w1(x32_as64, y32_as64, solver=solver)
    assert w1(torch.from_numpy(x), torch.from_numpy(y), solver=solver) == w1(x, y, solver=solver)
    grad_x = torch.from_numpy(x).requires_grad_()
    assert w1(grad_x, y, solver=solver) == w1(x, y, solver=solver)
    assert isinstance(w1(x, y, solver=solver), float)


def test_integer_histograms_are_accepted():
    x = np.zeros((3, 3), dtype=np.uint8)
    y = np.zeros((3, 3), dtype=np.uint8)
    x[0, 0], y[2, 1] = 200, 200
    for solver in SOLVERS:
        assert w1(x, y, solver=solver) == pytest.approx(200 * 3, rel=1e-12)


@pytest.mark.parametrize("solver", SOLVERS)
def test_zero_mass_channel_contributes_nothing(solver):
    x, y = _pair((3, 4, 4), seed=5)
    x[1], y[1] = 0.0, 0.0
    expected = w1(x[0], y[0], solver="pot") + w1(x[2], y[2], solver="pot")
    assert w1(x, y, solver=solver) == pytest.approx(expected, rel=RTOL_W1)
    assert w1(np.zeros((4, 4)), np.zeros((4, 4)), solver=solver) == 0.0
    with pytest.raises(ValueError, match="unequal mass in channel 1"):
        y[1, 0, 0] = 1e-3
        w1(x, y, solver=solver)


@pytest.mark.parametrize("solver", SOLVERS)
def test_w1_is_symmetric_homogeneous_and_zero_on_identical(solver):
    x, y = _pair((5, 7), seed=9)
    d = w1(x, y, solver=solver)
    assert d > 0
    assert w1(y, x, solver=solver) == pytest.approx(d, rel=RTOL_W1)
    assert w1(3.0 * x, 3.0 * y, solver=solver) == pytest.approx(3.0 * d, rel=RTOL_W1)
    assert w1(x, x, solver=solver) == 0.0


def test_l2_ground_is_euclidean_not_squared():
    x, y = one_hot_pair((6, 6), (0, 0), (3, 4), mass=2.0)
    assert w1(x, y, ground="l2") == pytest.approx(2.0 * 5.0, rel=1e-14)  # sqeuclidean would give 50
    assert w1(x, y, ground="l1") == pytest.approx(2.0 * 7.0, rel=1e-14)


def test_flow_plan_sign_convention():
    """Mass moving up from (1, 0) to (0, 0) is a positive vertical[0, 0] (Definition 3.1)."""
    x, y = one_hot_pair((3, 2), (1, 0), (0, 0), mass=0.5)
    for solver in ("lp", "network"):
        plan, value = optimal_flow_plan(x, y, solver=solver)
        expected_v = torch.zeros(2, 2, dtype=torch.float64)
        expected_v[0, 0] = 0.5
        torch.testing.assert_close(plan.vertical, expected_v, rtol=0, atol=1e-15)
        torch.testing.assert_close(
            plan.horizontal, torch.zeros(3, 1, dtype=torch.float64), rtol=0, atol=1e-15
        )
        assert value == pytest.approx(0.5, rel=1e-14)
    # in Eq. 23's arcs, g_(0,0),(1,0) (block "down", index 0) carries it: out - in = x' - x at (0,0)
    _, g = solve_ling_okada(x, y)
    expected_g = np.zeros(grid_arcs(3, 2).n_arcs)
    expected_g[0] = 0.5
    np.testing.assert_allclose(g, expected_g, rtol=0, atol=1e-15)


def test_optimal_flow_plan_shapes_dtype_and_torch_input():
    x, y = _pair((3, 5, 4), seed=11)
    plan, value = optimal_flow_plan(torch.from_numpy(x).float(), torch.from_numpy(y).float())
    assert isinstance(plan, FlowPlan)
    assert plan.vertical.shape == (3, 4, 4) and plan.horizontal.shape == (3, 5, 3)
    assert plan.vertical.dtype == torch.float64 and plan.horizontal.dtype == torch.float64
    x32, y32 = torch.from_numpy(x).float().double(), torch.from_numpy(y).float().double()
    # float32 rounding leaves the channel masses unequal by ~1e-7 (accepted: float32 tolerance is 1e-5);
    # the plan reproduces y up to exactly that difference, and nothing else
    mass_gap = (x32.sum((1, 2)) - y32.sum((1, 2))).abs()
    assert float(mass_gap.max()) > 1e-9
    for solver in ("lp", "network"):
        plan, value = optimal_flow_plan(
            torch.from_numpy(x).float(), torch.from_numpy(y).float(), solver=solver
        )
        residual = (apply_flow(x32, plan) - y32).abs().sum((1, 2))
        torch.testing.assert_close(residual, mass_gap, rtol=0, atol=1e-12)
        assert float(plan.l1_norm()) == pytest.approx(value, rel=RTOL_W1)
    plan2d, _ = optimal_flow_plan(x[0], y[0])
    assert plan2d.vertical.shape == (4, 4) and plan2d.horizontal.shape == (5, 3)


@pytest.mark.parametrize("shape", [(1, 1), (1, 6), (6, 1)])
def test_degenerate_grids(shape):
    x, y = _pair(shape, seed=2)
    plan, value = optimal_flow_plan(x, y)
    assert plan.image_shape == shape
    torch.testing.assert_close(apply_flow(torch.from_numpy(x), plan), torch.from_numpy(y), rtol=0, atol=1e-13)
    if shape == (1, 1):
        assert value == 0.0 and min_flow_norm(x, y)[1] == 0.0
    else:
        manual = np.abs(np.cumsum((x - y).ravel())).sum()  # 1-D W1: |CDF difference|
        for solver in SOLVERS:
            assert w1(x, y, solver=solver) == pytest.approx(manual, rel=RTOL_W1)


def test_flow_from_arcs_and_arcs_from_flow_validate():
    with pytest.raises(ValueError, match="g must have shape"):
        flow_from_arcs(np.zeros(5), (3, 3))
    with pytest.raises(ValueError, match=r"image_shape must be \(\.\.\., H, W\)"):
        flow_from_arcs(np.zeros(5), (3,))
    with pytest.raises(ValueError, match="plan must be a FlowPlan"):
        arcs_from_flow((torch.zeros(2, 3), torch.zeros(3, 2)))
    with pytest.raises(ValueError, match="inconsistent flow plan shapes"):
        arcs_from_flow(FlowPlan(torch.zeros(2, 3), torch.zeros(3, 3)))
    with pytest.raises(ValueError, match="inconsistent flow plan shapes"):
        arcs_from_flow(FlowPlan(torch.zeros(3), torch.zeros(4)))
    with pytest.raises(ValueError, match="g contains NaN or inf"):
        flow_from_arcs(np.full(grid_arcs(3, 3).n_arcs, np.nan), (3, 3))
    with pytest.raises(ValueError, match="flow plan horizontal contains NaN or inf"):
        arcs_from_flow(FlowPlan(torch.zeros(2, 3), torch.full((3, 2), torch.inf)))
    g = torch.arange(2 * grid_arcs(3, 4).n_arcs, dtype=torch.float32).reshape(2, -1)
    plan = flow_from_arcs(g, (2, 3, 4))
    assert plan.vertical.shape == (2, 2, 4) and plan.vertical.dtype == torch.float64
    np.testing.assert_array_equal(flow_from_arcs(arcs_from_flow(plan), (2, 3, 4)).vertical, plan.vertical)


def test_pot_raises_when_not_optimal():
    rng = np.random.default_rng(0)
    a, b = rng.random(40), rng.random(40)
    a, b = a / a.sum(), b / b.sum()
    cost = rng.random((40, 40))
    with pytest.raises(RuntimeError, match="did not reach optimality.*numItermax was 3"):
        emd2_checked(a, b, cost, numItermax=3)
    value, log = emd2_checked(a, b, cost)
    assert log["result_code"] == 1 and value > 0


def test_lp_raises_when_not_optimal():
    v = cp.Variable()
    with pytest.raises(RuntimeError, match="HiGHS returned status 'infeasible'"):
        solve_lp_checked(cp.Problem(cp.Minimize(v), [v >= 1, v <= 0]), "toy LP")


def test_lp_is_built_once_per_grid_shape():
    x, y = _pair((5, 6), seed=1)
    solve_ling_okada(x, y)
    lp = ling_okada_lp(5, 6)
    x2, y2 = _pair((5, 6), seed=2)
    value, g = solve_ling_okada(x2, y2)
    assert ling_okada_lp(5, 6) is lp
    assert value == pytest.approx(w1(x2, y2, solver="pot"), rel=RTOL_W1)
    assert g.shape == (grid_arcs(5, 6).n_arcs,)
    xc, yc = _pair((2, 5, 6), seed=3)
    value_c, g_c = solve_ling_okada(torch.from_numpy(xc), torch.from_numpy(yc))
    assert g_c.shape == (2, grid_arcs(5, 6).n_arcs) and (g_c >= 0).all()
    assert value_c == pytest.approx(g_c.sum(), rel=1e-12)
    assert value_c == pytest.approx(w1(xc, yc, solver="pot"), rel=RTOL_W1)


def test_network_crops_to_the_support_exactly():
    """Mass in one corner of a large grid: the cropped min-cost flow equals the uncropped solvers."""
    x, y = np.zeros((28, 28)), np.zeros((28, 28))
    small_x, small_y = _pair((5, 4), seed=21)
    x[20:25, 3:7], y[20:25, 3:7] = small_x, small_y
    y[24, 3] += 0.5
    x[20, 6] += 0.5  # the corners of the box carry mass: the crop is exactly rows 20-24, cols 3-6
    cropped_x, cropped_y = crop_to_support(x, y)
    assert cropped_x.shape == (5, 4)
    expected = w1(x, y, solver="pot")
    assert w1(x, y, solver="network") == pytest.approx(expected, rel=RTOL_W1)
    assert w1(x, y, solver="lp") == pytest.approx(expected, rel=RTOL_W1)
    plan, value = optimal_flow_plan(x, y, solver="network")  # full grid, not cropped
    assert plan.image_shape == (28, 28) and value == pytest.approx(expected, rel=RTOL_W1)
