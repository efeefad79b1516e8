"""Lemma 1 of Levine & Feizi (Eqs. 22-32): min ||delta||_1 = W1 with L1 ground, constructively.

Four independent computations of the same number must agree: Eq. 22 as an LP over delta
(built from Definition 3.1's Delta), the Ling-Okada LP (Eq. 23, cvxpy/HiGHS), POT on the
dense L1 cost, and the sparse min-cost flow. The maps of the proof are checked one by one:
Eq. 24 (g -> delta: feasible, ||delta||_1 <= sum g, strictly for a g with a circulation)
and Eq. 29 (delta -> g: feasible, sum g = ||delta||_1).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from verify.claims import ClaimLedger
from wbench import apply_flow, optimal_flow_plan, w1
from wbench.flow import FlowPlan
from wbench.transport import arcs_from_flow, flow_from_arcs, grid_arcs, min_flow_norm, solve_ling_okada
from wbench.transport.examples import digits_pair, one_hot_pair, random_pair

RTOL_W1 = 1e-9
"""Agreement of exact float64 solvers (observed: <= 1e-13; the task's bar is 1e-7)."""
RTOL_EXACT = 1e-12
"""Identities that hold to float64 rounding (Eq. 29's sum g = ||delta||_1, one-hot distances)."""
FEAS_RTOL = 1e-12
"""Residual of Delta(x, delta) = x' or A g = x' - x, relative to the total mass."""

CASES = {
    "dense 2x2": lambda: random_pair(np.random.default_rng(1), (2, 2)),
    "dense 3x5": lambda: random_pair(np.random.default_rng(2), (3, 5)),
    "dense 8x8": lambda: random_pair(np.random.default_rng(3), (8, 8)),
    "dense 10x7": lambda: random_pair(np.random.default_rng(4), (10, 7)),
    "dense 16x16": lambda: random_pair(np.random.default_rng(5), (16, 16)),
    "dense 28x28": lambda: random_pair(np.random.default_rng(6), (28, 28)),
    "dense 20x28": lambda: random_pair(np.random.default_rng(12), (20, 28)),
    "dense 1x9": lambda: random_pair(np.random.default_rng(7), (1, 9)),
    "dense 9x1": lambda: random_pair(np.random.default_rng(8), (9, 1)),
    "dense 1x1": lambda: random_pair(np.random.default_rng(9), (1, 1)),
    "sparse 28x28 (19% mass)": lambda: random_pair(np.random.default_rng(10), (28, 28), density=0.19),
    "sparse 12x20 (10% mass)": lambda: random_pair(np.random.default_rng(11), (12, 20), density=0.1),
    "digits 0 vs 1 (8x8)": lambda: digits_pair(0, 1),
    "digits 5 vs 17 (8x8)": lambda: digits_pair(5, 17),
    "one-hot 28x28 corner to corner": lambda: one_hot_pair((28, 28), (0, 0), (27, 27)),
}


def feas_atol(x: np.ndarray) -> float:
    return FEAS_RTOL * max(float(x.sum()), 1.0)


def check_lemma1(claims: ClaimLedger, x: np.ndarray, y: np.ndarray, case: str) -> float:
    """All the Lemma 1 equalities on one pair; returns W1 (POT, L1 ground)."""
    w_pot = w1(x, y, ground="l1", solver="pot")
    w_lp = w1(x, y, ground="l1", solver="lp")
    w_net = w1(x, y, ground="l1", solver="network")
    plan_22, w_22 = min_flow_norm(x, y)
    claims.close("Lemma 1: min||delta||_1 (Eq. 22 LP) = W1 (POT)", w_22, w_pot, rtol=RTOL_W1, case=case)
    claims.close("Lemma 1: Ling-Okada LP (Eq. 23) = W1 (POT)", w_lp, w_pot, rtol=RTOL_W1, case=case)
    claims.close("Lemma 1: network min-cost flow = W1 (POT)", w_net, w_pot, rtol=RTOL_W1, case=case)
    x_t, y_t = torch.from_numpy(x), torch.from_numpy(y)
    claims.close(
        "Lemma 1: Eq. 22 minimiser is feasible",
        apply_flow(x_t, plan_22),
        y_t,
        rtol=0,
        atol=feas_atol(x),
        case=case,
    )
    for solver in ("lp", "network"):
        plan, value = optimal_flow_plan(x, y, solver=solver)
        claims.close(
            "Lemma 1: optimal_flow_plan reproduces x'",
            apply_flow(x_t, plan),
            y_t,
            rtol=0,
            atol=feas_atol(x),
            case=f"{case} ({solver})",
        )
        claims.close(
            "Lemma 1: ||optimal_flow_plan||_1 = W1 (POT)",
            [float(plan.l1_norm()), value],
            w_pot,
            rtol=RTOL_W1,
            case=f"{case} ({solver})",
        )
    return w_pot


@pytest.mark.parametrize("name", list(CASES))
def test_lemma1_cases(claims, name):
    x, y = CASES[name]()
    check_lemma1(claims, x, y, name)


@settings(max_examples=30, deadline=None)
@given(
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    density=st.sampled_from([1.0, 0.3]),
    seed=st.integers(0, 2**31 - 1),
)
def test_lemma1_hypothesis(claims, h, w, density, seed):
    x, y = random_pair(np.random.default_rng(seed), (h, w), density=density)
    check_lemma1(claims, x, y, f"{h}x{w} density {density} seed {seed}")


@pytest.mark.parametrize(
    ("shape", "source", "target"),
    [
        ((28, 28), (3, 4), (20, 11)),
        ((5, 9), (4, 8), (0, 0)),
        ((1, 12), (0, 2), (0, 9)),
        ((7, 1), (6, 0), (1, 0)),
    ],
)
def test_lemma1_one_hot_is_manhattan_distance(claims, shape, source, target):
    mass = 0.37
    x, y = one_hot_pair(shape, source, target, mass)
    manhattan = mass * (abs(source[0] - target[0]) + abs(source[1] - target[1]))
    case = f"{shape} {source}->{target}"
    for solver in ("pot", "lp", "network"):
        claims.close(
            "Lemma 1: one-hot W1 (L1) = mass x Manhattan distance",
            w1(x, y, solver=solver),
            manhattan,
            rtol=RTOL_EXACT,
            case=f"{case} ({solver})",
        )
    claims.close(
        "Lemma 1: one-hot W1 (L1) = mass x Manhattan distance",
        min_flow_norm(x, y)[1],
        manhattan,
        rtol=RTOL_EXACT,
        case=f"{case} (Eq. 22)",
    )


def circulation(height: int, width: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """A random non-negative circulation on the Ling-Okada arcs, and the sum of its 2-cycle weights.

    Sum of 2-cycles (an arc and its reverse, equal weight; Eq. 24 cancels them) and of
    4-cycles around grid squares (Eq. 24 turns them into a curl of delta).
    """
    arcs = grid_arcs(height, width)
    nv, nh = arcs.n_vertical, arcs.n_horizontal
    c = np.zeros(arcs.n_arcs)
    back_forth_v, back_forth_h = rng.random(nv), rng.random(nh)
    c[:nv] += back_forth_v
    c[nv : 2 * nv] += back_forth_v
    c[2 * nv : 2 * nv + nh] += back_forth_h
    c[2 * nv + nh :] += back_forth_h
    if height > 1 and width > 1:
        # the square with top-left (i, j): (i,j)->(i,j+1)->(i+1,j+1)->(i+1,j)->(i,j)
        for i in range(height - 1):
            for j in range(width - 1):
                t = rng.random()
                c[2 * nv + i * (width - 1) + j] += t  # right (i,j)->(i,j+1)
                c[i * width + j + 1] += t  # down (i,j+1)->(i+1,j+1)
                c[2 * nv + nh + (i + 1) * (width - 1) + j] += t  # left (i+1,j+1)->(i+1,j)
                c[nv + i * width + j] += t  # up (i+1,j)->(i,j)
    return c, 2.0 * float(back_forth_v.sum() + back_forth_h.sum())


@pytest.mark.parametrize(
    "name", ["dense 3x5", "dense 10x7", "sparse 12x20 (10% mass)", "dense 1x9", "dense 9x1"]
)
def test_eq24_maps_feasible_g_to_feasible_delta(claims, name):
    x, y = CASES[name]()
    h, w = x.shape
    arcs = grid_arcs(h, w)
    _, g_opt = solve_ling_okada(x, y)
    x_t, y_t = torch.from_numpy(x), torch.from_numpy(y)
    scale = float(x.sum()) / x.size
    circ, two_cycles = circulation(h, w, np.random.default_rng(h * 100 + w))
    for label, g in (("optimal g", g_opt), ("g + circulation", g_opt + scale * circ)):
        case = f"{name}, {label}"
        claims.close(
            "Eq. 23: g is feasible (A g = x' - x)",
            arcs.incidence @ g,
            (y - x).ravel(),
            rtol=0,
            atol=feas_atol(x),
            case=case,
        )
        plan = flow_from_arcs(g, x.shape)
        claims.close(
            "Eq. 24-27: delta(g) is feasible (Delta(x, delta) = x')",
            apply_flow(x_t, plan),
            y_t,
            rtol=0,
            atol=feas_atol(x),
            case=case,
        )
        claims.leq(
            "Eq. 28: ||delta(g)||_1 <= sum g",
            float(plan.l1_norm()),
            g.sum(),
            atol=RTOL_EXACT * g.sum(),  # float64 rounding of the two sums
            case=case,
        )
    plan = flow_from_arcs(g_opt + scale * circ, x.shape)
    gap = (g_opt + scale * circ).sum() - float(plan.l1_norm())
    claims.leq(
        "Eq. 28: strict for g with a circulation (gap >= its 2-cycles)",
        scale * two_cycles,
        gap,
        atol=RTOL_EXACT * gap,
        case=name,
    )
    claims.true("Eq. 28: strict for g with a circulation (gap > 0)", gap > 0, case=name, detail=f"gap {gap}")


@pytest.mark.parametrize(("h", "w"), [(2, 2), (5, 8), (11, 6), (1, 7), (6, 1), (28, 28)])
def test_eq29_maps_delta_to_feasible_g_with_equal_cost(claims, h, w):
    rng = np.random.default_rng(h * 1000 + w)
    x = torch.from_numpy(rng.random((h, w)))
    plan = FlowPlan(
        torch.from_numpy(rng.laplace(size=(h - 1, w))), torch.from_numpy(rng.laplace(size=(h, w - 1)))
    )
    x_prime = apply_flow(x, plan)
    g = arcs_from_flow(plan)
    case = f"{h}x{w}"
    claims.true("Eq. 29: g >= 0", bool((g >= 0).all()), case=case)
    claims.close(
        "Eq. 29-31: g(delta) is feasible (A g = x' - x)",
        grid_arcs(h, w).incidence @ g,
        (x_prime - x).numpy().ravel(),
        rtol=0,
        atol=FEAS_RTOL * max(float(plan.l1_norm()), 1.0),
        case=case,
    )
    claims.close(
        "Eq. 32: sum g(delta) = ||delta||_1", g.sum(), float(plan.l1_norm()), rtol=RTOL_EXACT, case=case
    )
    back = flow_from_arcs(g, (h, w))
    claims.close(
        "Eq. 24 o Eq. 29 = identity on delta",
        torch.cat([back.vertical.ravel(), back.horizontal.ravel()]),
        torch.cat([plan.vertical.ravel(), plan.horizontal.ravel()]),
        rtol=0,
        atol=0,
        case=case,
    )


@pytest.mark.parametrize("error", [1e-4, -1e-4, 1e-6])
def test_solver_comparison_rejects_a_wrong_w1(error):
    """The tolerance of the solver-agreement claims catches a solver that is off by 1e-4 (or 1e-6)."""
    x, y = CASES["dense 8x8"]()
    exact = w1(x, y, solver="pot")
    scratch = ClaimLedger()  # not the session ledger: this check must fail without reporting a failure
    with pytest.raises(AssertionError, match="tolerance"):
        scratch.close("scratch", exact * (1 + error), exact, rtol=RTOL_W1)
    scratch.close("scratch", exact * (1 + RTOL_W1 / 10), exact, rtol=RTOL_W1)
