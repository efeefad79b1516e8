"""Corollaries 1-3 of Levine & Feizi on exact W1 values.

- Corollary 1: ||x - x'||_1 <= 2 W1(x, x') for L1 and L2 ground, tight on a half-mass shift.
- Corollary 2: colour W1 (no mass between channels) = sum of channel W1s = minimum norm of
  a per-channel flow plan (Eqs. 57-69); channels may carry different masses.
- Corollary 3: sqrt(2) W1(L2 ground) >= W1(L1 ground) (Eq. 70), tight on a diagonal move.
"""

from __future__ import annotations

import math

import numpy as np
import ot
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wbench import apply_flow, optimal_flow_plan, w1
from wbench.transport import min_flow_norm
from wbench.transport.examples import digits_pair, one_hot_pair, random_pair

RTOL_W1 = 1e-9
"""Agreement of exact float64 W1 values from different solvers (observed <= 1e-13)."""
RTOL_EXACT = 1e-12
"""Float64 rounding allowance for identities and inequalities between exact values."""

PAIRS = {
    "dense 8x8": lambda: random_pair(np.random.default_rng(21), (8, 8)),
    "dense 10x7": lambda: random_pair(np.random.default_rng(22), (10, 7)),
    "dense 28x28": lambda: random_pair(np.random.default_rng(23), (28, 28)),
    "sparse 28x28": lambda: random_pair(np.random.default_rng(24), (28, 28), density=0.19),
    "dense 1x12": lambda: random_pair(np.random.default_rng(25), (1, 12)),
    "dense 12x1": lambda: random_pair(np.random.default_rng(26), (12, 1)),
    "digits 3 vs 8": lambda: digits_pair(3, 8),
    "one-hot 16x16": lambda: one_hot_pair((16, 16), (2, 13), (11, 5)),
}


def check_corollary1(claims, x, y, case):
    l1_dist = float(np.abs(x - y).sum())
    for ground in ("l1", "l2"):
        bound = 2.0 * w1(x, y, ground=ground)
        claims.leq(
            f"Cor. 1: ||x - x'||_1 <= 2 W1 ({ground.upper()} ground)",
            l1_dist,
            bound,
            atol=RTOL_EXACT * (bound + x.sum()),  # x' is x rescaled: rounding of order 1e-16 * mass
            case=case,
        )


def check_corollary3(claims, x, y, case):
    w_l1, w_l2 = w1(x, y, ground="l1"), w1(x, y, ground="l2")
    claims.leq(
        "Cor. 3: W1(L1 ground) <= sqrt(2) W1(L2 ground)",
        w_l1,
        math.sqrt(2.0) * w_l2,
        atol=RTOL_EXACT * (w_l1 + x.sum()),
        case=case,
    )


@pytest.mark.parametrize("name", list(PAIRS))
def test_corollary1_and_3_cases(claims, name):
    x, y = PAIRS[name]()
    check_corollary1(claims, x, y, name)
    check_corollary3(claims, x, y, name)


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(1, 7),
    w=st.integers(1, 7),
    density=st.sampled_from([1.0, 0.25]),
    seed=st.integers(0, 2**31 - 1),
)
def test_corollary1_and_3_hypothesis(claims, h, w, density, seed):
    x, y = random_pair(np.random.default_rng(seed), (h, w), density=density)
    case = f"{h}x{w} density {density} seed {seed}"
    check_corollary1(claims, x, y, case)
    check_corollary3(claims, x, y, case)


@pytest.mark.parametrize(
    ("shape", "pixel", "axis"), [((5, 5), (1, 2), 0), ((4, 9), (3, 0), 1), ((6, 1), (2, 0), 0)]
)
def test_corollary1_is_tight_on_half_mass_shift(claims, shape, pixel, axis):
    """All mass at (i, j) vs half at (i, j) and half at its neighbour: ||x - x'||_1 = 2 W1 = mass."""
    mass = 0.8
    x, y = np.zeros(shape), np.zeros(shape)
    x[pixel] = mass
    y[pixel] = mass / 2
    neighbour = (pixel[0] + 1, pixel[1]) if axis == 0 else (pixel[0], pixel[1] + 1)
    y[neighbour] = mass / 2
    for ground in ("l1", "l2"):
        claims.close(
            "Cor. 1: equality ||x - x'||_1 = 2 W1 on the half-mass shift",
            np.abs(x - y).sum(),
            2.0 * w1(x, y, ground=ground),
            rtol=RTOL_EXACT,
            case=f"{shape} {pixel} axis {axis} ({ground})",
        )


@pytest.mark.parametrize(("shape", "source"), [((4, 4), (1, 1)), ((28, 28), (27, 0)), ((2, 3), (0, 1))])
def test_corollary3_is_tight_on_a_diagonal_move(claims, shape, source):
    target = (source[0] - 1, source[1] + 1) if source[0] > 0 else (source[0] + 1, source[1] + 1)
    x, y = one_hot_pair(shape, source, target, mass=0.6)
    w_l1, w_l2 = w1(x, y, ground="l1"), w1(x, y, ground="l2")
    case = f"{shape} {source}->{target}"
    claims.close(
        "Cor. 3: equality on a one-pixel diagonal move",
        math.sqrt(2.0) * w_l2,
        w_l1,
        rtol=RTOL_EXACT,
        case=case,
    )
    claims.close("Cor. 3: equality on a one-pixel diagonal move", w_l1, 0.6 * 2.0, rtol=RTOL_EXACT, case=case)


def block_diagonal_w1(x: np.ndarray, y: np.ndarray, ground: str) -> tuple[float, float]:
    """W1 of a colour pair as ONE transport problem whose plan is forced block-diagonal (Eq. 55).

    The cost between pixels of different channels is larger than any within-channel
    distance, so with equal masses per channel an optimal plan moves nothing across
    channels; Eqs. 56-60 then say the optimum is the sum of the channel W1s.
    Returns the optimum and the fraction of the mass the plan moved across channels.
    """
    c, h, w = x.shape
    pos = np.stack(np.unravel_index(np.arange(h * w), (h, w)), axis=1).astype(np.float64)
    within = ot.dist(pos, pos, metric="cityblock" if ground == "l1" else "euclidean")
    cross = 2.0 * (h + w)
    cost = np.full((c * h * w, c * h * w), cross)
    for k in range(c):
        cost[k * h * w : (k + 1) * h * w, k * h * w : (k + 1) * h * w] = within
    total = x.sum()
    plan = ot.emd(x.ravel() / total, y.ravel() / total, cost, numItermax=10**7)
    blocks = plan.reshape(c, h * w, c, h * w)
    off_diagonal = sum(blocks[k, :, m].sum() for k in range(c) for m in range(c) if k != m)
    return float((plan * cost).sum()) * total, float(off_diagonal)


@pytest.mark.parametrize(
    ("name", "shape", "density"),
    [
        ("colour 3x8x8", (3, 8, 8), 1.0),
        ("colour 3x10x7 sparse", (3, 10, 7), 0.3),
        ("colour 2x12x12", (2, 12, 12), 1.0),
    ],
)
def test_corollary2_colour_w1_is_sum_of_channels(claims, name, shape, density):
    x, y = random_pair(np.random.default_rng(sum(shape)), shape, density=density)
    masses = x.sum(axis=(1, 2))
    claims.true(
        "Cor. 2: test channels carry different masses",
        len(set(np.round(masses, 9))) == len(masses),
        case=name,
    )
    for ground in ("l1", "l2"):
        channel_sum = sum(w1(x[k], y[k], ground=ground) for k in range(shape[0]))
        claims.close(
            "Cor. 2: colour W1 = sum of channel W1s",
            w1(x, y, ground=ground),
            channel_sum,
            rtol=RTOL_EXACT,
            case=f"{name} ({ground})",
        )
        joint, across = block_diagonal_w1(x, y, ground)
        claims.close(
            "Cor. 2: joint transport moves no mass across channels (Eq. 55)",
            across,
            0.0,
            rtol=0,
            atol=RTOL_EXACT,  # a fraction of the total mass
            case=f"{name} ({ground})",
        )
        claims.close(
            "Cor. 2: sum of channel W1s = block-diagonal transport (Eqs. 55-60)",
            joint,
            channel_sum,
            rtol=RTOL_W1,
            case=f"{name} ({ground})",
        )
    colour_w1 = w1(x, y, ground="l1")
    plan, value = optimal_flow_plan(torch.from_numpy(x), torch.from_numpy(y))
    claims.true("Cor. 2: per-channel flow plan shapes", plan.image_shape == shape, case=name)
    claims.close(
        "Cor. 2: per-channel optimal plan reproduces x'",
        apply_flow(torch.from_numpy(x), plan),
        y,
        rtol=0,
        atol=RTOL_EXACT * masses.sum(),
        case=name,
    )
    claims.close(
        "Cor. 2: colour W1 (L1) = min flow-plan norm (Eq. 69)",
        [float(plan.l1_norm()), value, min_flow_norm(x, y)[1]],
        colour_w1,
        rtol=RTOL_W1,
        case=name,
    )
    claims.close(
        "Cor. 2: colour W1 (L1) = min flow-plan norm (Eq. 69)",
        [w1(x, y, solver="lp"), w1(x, y, solver="network")],
        colour_w1,
        rtol=RTOL_W1,
        case=f"{name} (lp, network)",
    )
