"""The certificate table (Theorem 1, Corollaries 1 and 3) as implemented by ``certified_radius``.

The radius table is checked against the formulas written out independently here; the
two metric inequalities that justify the ``/ 2`` (Corollary 1) and ``/ sqrt 2``
(Corollary 3) factors are checked on random and on tight image pairs with exact W1.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from wbench import certified_radius, w1
from wbench.certification import apply_convention, lower_confidence_bound

P_GRID = np.array([0.5, 0.500001, 0.6, 0.75, 0.9, 0.99, 0.999, 0.99999])
SIGMAS = (5e-5, 1e-3, 0.01, 0.1, 0.5)


def log_odds_radius(p: np.ndarray, sigma: float) -> np.ndarray:
    # Eq. 34 solved for rho with p_B = 1 - p_A: p/(1-p) = exp(2 sqrt(2) rho / sigma)
    return np.array([sigma * math.log(pi / (1 - pi)) / (2 * math.sqrt(2)) for pi in p])


@pytest.mark.parametrize(
    "noise, ground, factor, claim",
    [
        ("wasserstein", "l1", 1.0, "Theorem 1: W1 radius sigma/(2 sqrt 2) ln(p/(1-p))"),
        ("wasserstein", "l2", 1 / math.sqrt(2), "Corollary 3: L2-ground radius (divide by sqrt 2)"),
        ("laplace", "l1", 0.5, "Corollary 1: Laplace baseline W1 radius = rho_L1/2"),
        ("laplace", "l2", 0.5, "Corollary 1: Laplace baseline W1 radius = rho_L1/2"),
    ],
)
@pytest.mark.parametrize("sigma", SIGMAS)
def test_radius_table(claims, noise, ground, factor, claim, sigma):
    got = certified_radius(P_GRID, sigma, noise, ground)
    claims.close(
        claim, got, factor * log_odds_radius(P_GRID, sigma), rtol=1e-13, atol=0, case=f"{noise}/{ground}"
    )
    # the certificate satisfies Eq. 34 at equality: p/(1-p) = exp(2 sqrt 2 rho_flow / sigma)
    rho_flow = got / factor
    claims.close(
        "Theorem 1: radius meets Eq. 34 with equality",
        np.exp(2 * math.sqrt(2) * rho_flow / sigma),
        P_GRID / (1 - P_GRID),
        rtol=1e-12,
        case=f"{noise}/{ground} sigma={sigma}",
    )


def test_conventions_at_and_below_one_half(claims):
    claim = "CERTIFY: conventions (cohen abstains below 1/2, authors radius 0)"
    for p in (0.0, 0.2, 0.4999999):
        claims.true(claim, apply_convention(7, p, "cohen") == -1, case=f"cohen p={p}")
        claims.true(claim, apply_convention(7, p, "authors") == 7, case=f"authors p={p}")
        claims.close(claim, certified_radius(p, 0.1), 0.0, rtol=0, atol=0, case=f"radius p={p}")
    claims.true(claim, apply_convention(7, 0.5, "cohen") == 7, case="cohen p=1/2 certifies radius 0")
    claims.close(claim, certified_radius(0.5, 0.1), 0.0, rtol=0, atol=0, case="p=1/2")


@pytest.mark.parametrize(
    "k, n, alpha", [(0, 100, 0.05), (50, 100, 0.05), (9990, 10000, 0.05), (99, 100, 0.001)]
)
def test_clopper_pearson_coverage_is_exact(claims, k, n, alpha):
    """The lower bound L(k) solves P[Bin(n, L) >= k] = alpha (exact one-sided Clopper-Pearson)."""
    from scipy import stats

    low = lower_confidence_bound(k, n, alpha)
    tail = 0.0 if k == 0 else float(stats.binom.sf(k - 1, n, low))
    claims.close(
        "CERTIFY: one-sided Clopper-Pearson bound at level alpha",
        tail if k > 0 else low,
        alpha if k > 0 else 0.0,
        rtol=1e-7,
        case=f"k={k} n={n}",
    )


def _random_pair(rng: np.random.Generator, h: int, w: int, sparse: bool) -> tuple[np.ndarray, np.ndarray]:
    x, y = rng.random((h, w)), rng.random((h, w))
    if sparse:
        x[rng.random((h, w)) < 0.6] = 0.0
        y[rng.random((h, w)) < 0.6] = 0.0
        x[0, 0] += 0.1
        y[-1, -1] += 0.1
    return x / x.sum(), y / y.sum()


@pytest.mark.parametrize("h, w, sparse", [(4, 4, False), (3, 6, False), (5, 4, True)])
def test_metric_inequalities_behind_the_factors(claims, h, w, sparse):
    rng = np.random.default_rng(h * 100 + w + sparse)
    for trial in range(4):
        x, y = _random_pair(rng, h, w, sparse)
        l1_dist = float(np.abs(x - y).sum())
        w_l1, w_l2 = w1(x, y, ground="l1"), w1(x, y, ground="l2")
        case = f"{h}x{w} sparse={sparse} #{trial}"
        # Corollary 1: ||x - x'||_1 <= 2 W1 for both ground metrics (Laplace radius / 2, no sqrt 2)
        claims.leq(
            "Corollary 1: ||x-x'||_1 <= 2 W1 (L1 and L2 ground)", l1_dist, 2 * w_l1, atol=1e-9, case=case
        )
        claims.leq(
            "Corollary 1: ||x-x'||_1 <= 2 W1 (L1 and L2 ground)", l1_dist, 2 * w_l2, atol=1e-9, case=case
        )
        # Corollary 3 (Eq. 70): W1_L1 <= sqrt 2 W1_L2
        claims.leq("Corollary 3: W1_L1 <= sqrt 2 W1_L2", w_l1, math.sqrt(2) * w_l2, atol=1e-9, case=case)


def test_the_factors_are_tight(claims):
    # Corollary 1's example: all mass at (i, j) vs split between (i, j) and (i+1, j)
    x = np.zeros((3, 3))
    x[1, 1] = 1.0
    y = np.zeros((3, 3))
    y[1, 1] = y[2, 1] = 0.5
    for ground in ("l1", "l2"):
        claims.close(
            "Corollary 1: the factor 2 is attained",
            np.abs(x - y).sum(),
            2 * w1(x, y, ground=ground),
            rtol=1e-12,
            case=ground,
        )
    # Corollary 3: a diagonal move costs 2 under L1 and sqrt 2 under L2
    y = np.zeros((3, 3))
    y[2, 2] = 1.0
    claims.close(
        "Corollary 3: the factor sqrt 2 is attained",
        w1(x, y, ground="l1"),
        math.sqrt(2) * w1(x, y, ground="l2"),
        rtol=1e-12,
    )
