"""Theorem 1 of Levine & Feizi (Eqs. 33-46): Wasserstein smoothing certifies a W1 ball.

Three independent lines of evidence:

1. **Exact, closed form.** On a 1x2 image (one flow variable) and a 2x2 image (four flow
   variables) threshold classifiers have closed-form Laplace smoothed probabilities. For
   every shift inside the certified radius the class ordering of Eq. 35 holds; the radius
   never exceeds the exact robust radius and is tight as the margin goes to 0. The
   library's Monte Carlo smoothing matches the closed form (Eq. 33).
2. **The proof's additivity (Eqs. 36-41).** ``delta_x`` with ``Delta(u, delta_x) = x`` exists
   (built by ``optimal_flow_plan``), ``Delta(u, delta_x + d) = Delta(x, d)`` sample by sample,
   Eq. 40 holds with exact W1, and ``f(Delta(x, d)) = f_flow(delta_x + d)`` for every draw.
3. **Statistical soundness.** Certify points of a tiny classifier on a 3x3 grid, then
   attack inside the certified ball with flow plans of norm <= rho (Lemma 1: they cover the
   W1 ball exactly): all vertices of the L1 ball, random plans on its boundary and
   projected gradient descent on a smooth surrogate. The smoothed prediction, re-estimated
   with a one-sided confidence bound, never flips; at six times the certified radius the
   same search does find flips, so it has power (the bound is about 4x conservative here,
   as the closed forms predict: a factor 2 from the flat density of summed flows and
   a factor up to 2 from Lecuyer et al.'s bound at large margins).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from wbench import FlowPlan, apply_flow, certified_radius, optimal_flow_plan, w1
from wbench.certification import lower_confidence_bound
from wbench.flow import apply_flow_unchecked
from wbench.noise import sample_laplace_flow
from wbench.smoothing import WassersteinSmoothing

SQRT2 = math.sqrt(2.0)


def eq34_radius(p_a: float, p_b: float, sigma: float) -> float:
    """The largest rho with p_A >= exp(2 sqrt 2 rho / sigma) p_B (Eq. 34)."""
    return sigma / (2 * SQRT2) * math.log(p_a / p_b)


# --- 1. closed forms -----------------------------------------------------------------------


def laplace_sf(z: np.ndarray, sigma: float) -> np.ndarray:
    """P(eps > z), eps ~ Laplace with std sigma."""
    return stats.laplace(scale=sigma / SQRT2).sf(z)


def laplace_sum2_sf(z: np.ndarray, sigma: float) -> np.ndarray:
    """P(e1 + e2 > z) for two i.i.d. Laplace(std sigma): 1/2 e^{-|z|/b} (1 + |z|/(2b)) for z >= 0."""
    b = sigma / SQRT2
    z = np.asarray(z, dtype=np.float64)
    tail = 0.5 * np.exp(-np.abs(z) / b) * (1 + np.abs(z) / (2 * b))
    return np.where(z >= 0, tail, 1 - tail)


def three_class_probs(a: np.ndarray, t1: float, t2: float, sigma: float) -> np.ndarray:
    """Smoothed class probabilities on the 1x2 image (a, 1-a): class by pixel-0 mass a + h vs t1 < t2."""
    above1, above2 = laplace_sf(t1 - a, sigma), laplace_sf(t2 - a, sigma)
    return np.stack([1 - above1, above1 - above2, above2], axis=-1)


@pytest.mark.parametrize("sigma", [0.02, 0.1, 0.3])
def test_eq35_ordering_holds_for_every_shift_in_the_radius_1d(claims, sigma):
    """1x2 image, one horizontal flow variable h: Delta((a, 1-a), h) = (a + h, 1 - a - h), W1 = |a - a'|."""
    t1, t2 = 0.35, 0.6
    worst_gap = math.inf
    for a in np.linspace(0.05, 0.95, 37):
        p = three_class_probs(np.array(a), t1, t2, sigma)
        order = np.argsort(p)[::-1]
        i, p_a, p_b = int(order[0]), float(p[order[0]]), float(p[order[1]])
        if p_a <= p_b:
            continue
        rho = eq34_radius(p_a, p_b, sigma)
        shifts = np.concatenate([np.linspace(-rho, rho, 401), [-rho, rho]])
        q = three_class_probs(a + shifts, t1, t2, sigma)
        gap = q[:, i] - np.delete(q, i, axis=1).max(axis=1)  # Eq. 35: >= 0
        worst_gap = min(worst_gap, float(gap.min()))
        claims.leq(
            "Theorem 1: Eq. 35 ordering on the certified ball (closed form)",
            -gap,
            np.zeros_like(gap),
            atol=1e-12,
            case=f"1-D sigma={sigma} a={a:.3f}",
        )
    assert math.isfinite(worst_gap)


@pytest.mark.parametrize("sigma", [0.01, 0.05, 0.2])
def test_radius_is_below_and_close_to_the_exact_radius_2x2(claims, sigma):
    """2x2 image, class 1 iff pixel (0,0) mass > t. Pixel (0,0) receives v[0,0] + h[0,0].

    Moving mass out of pixel (0,0) costs 1 per unit, so the exact robust W1 radius of the
    smoothed classifier is x00 - t (the smoothed probability is 1/2 exactly at x00 = t).
    """
    t = 0.25
    margins = np.geomspace(1e-4, 0.2, 25)
    ratios = []
    for d in margins:
        x00 = t + d
        p_a, p_b = float(laplace_sum2_sf(t - x00, sigma)), float(laplace_sum2_sf(x00 - t, sigma))
        rho = eq34_radius(p_a, p_b, sigma)
        claims.leq(
            "Theorem 1: radius <= exact robust radius (closed form)",
            rho,
            d,
            atol=1e-15,
            case=f"{sigma} {d:.1e}",
        )
        # the worst flow of norm rho moves rho out of pixel (0,0): p_A(x~) >= 1/2 still
        p_worst = float(laplace_sum2_sf(t - (x00 - rho), sigma))
        claims.leq("Theorem 1: Eq. 35 ordering on the certified ball (closed form)", 0.5, p_worst, atol=1e-12)
        ratios.append(rho / d)
    # here the class depends on v + h, whose density is flat at 0, so to first order in d / b
    # p_A = 1/2 + d / (4b) and rho / exact -> 1/2: the flow-space bound is within a factor 2
    claims.close(
        "Theorem 1: 2x2 radius / exact -> 1/2 as the margin -> 0", ratios[0], 0.5, rtol=1e-3, case=f"{sigma}"
    )


@pytest.mark.parametrize("sigma", [0.01, 0.05, 0.2])
def test_radius_is_tight_in_one_flow_variable(claims, sigma):
    """1x2 image, class 1 iff a + h > t. Exact radius d = a - t; rho / d = ln(2 e^{d/b} - 1) b / (2d) -> 1."""
    b = sigma / SQRT2
    margins = np.geomspace(1e-7, 0.5, 30)
    ratios = []
    for d in margins:
        p_a, p_b = float(laplace_sf(-d, sigma)), float(laplace_sf(d, sigma))  # p_b = 1 - p_a, no cancellation
        rho = eq34_radius(p_a, p_b, sigma)
        claims.leq(
            "Theorem 1: radius <= exact robust radius (closed form)", rho, d, atol=1e-15, case=f"1-D {d:.1e}"
        )
        ratios.append(rho / d)
    # rho / d = 1 - d / (2b) + O((d/b)^2): the deficit is first order in the margin
    u0 = margins[0] / b
    claims.close(
        "Theorem 1: 1-D radius is tight as the margin -> 0", ratios[0], 1.0, rtol=u0, case=f"sigma={sigma}"
    )
    claims.true(
        "Theorem 1: 1-D radius is tight as the margin -> 0",
        bool(np.all(np.diff(ratios) < 0)),
        case="monotone",
    )


def test_library_smoothing_matches_the_closed_form(claims):
    """Eq. 33 as implemented: WassersteinSmoothing's counts vs the closed form, within a 99.99% CI."""

    class PixelThreshold(nn.Module):
        def __init__(self, t: float):
            super().__init__()
            self.t = t

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            s = x[:, 0, 0, 0] / x.sum((1, 2, 3)) - self.t  # decision on the normalised mass
            return torch.stack([-s, s], dim=1)

    sigma, t, n = 0.05, 0.25, 200_000
    for index, (mass, x00) in enumerate(((1.0, 0.28), (7.0, 0.2), (0.3, 0.26))):
        rest = (1 - x00) / 3
        x = torch.tensor([[[x00, rest], [rest, rest]]], dtype=torch.float64) * mass
        sm = WassersteinSmoothing(
            PixelThreshold(t).double(), 2, sigma, seed=0, batch_size=50_000, device="cpu"
        )
        k = int(sm.sample_counts(x, n, index=index)[1])
        p_exact = float(laplace_sum2_sf(t - x00, sigma))
        ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.9999, method="exact")
        half = (ci.high - ci.low) / 2
        claims.close(
            "Eq. 33: WassersteinSmoothing matches closed-form Laplace smoothing",
            k / n,
            p_exact,
            rtol=0,
            atol=half,
            case=f"mass={mass}",
        )


# --- 2. additivity of the proof --------------------------------------------------------------


def _distribution(rng: np.random.Generator, c: int, h: int, w: int, kind: str) -> np.ndarray:
    if kind == "one-hot":
        x = np.zeros((c, h, w))
        x[:, rng.integers(h), rng.integers(w)] = 1.0
    elif kind == "sparse":
        x = rng.random((c, h, w)) * (rng.random((c, h, w)) < 0.4)
        x[:, 0, -1] += 0.2
    else:
        x = rng.random((c, h, w))
    return x / x.sum()  # total mass 1 over all channels (Corollary 2)


@pytest.mark.parametrize("c, h, w", [(1, 4, 5), (1, 3, 3), (3, 4, 3)])
@pytest.mark.parametrize("kind", ["dense", "sparse", "one-hot"])
def test_additivity_used_by_the_proof(claims, c, h, w, kind):
    rng = np.random.default_rng(100 * c + 10 * h + w + len(kind))
    x = _distribution(rng, c, h, w, kind)
    u = np.broadcast_to(x.sum((1, 2), keepdims=True) / (h * w), x.shape).copy()  # uniform per channel
    case = f"{c}x{h}x{w} {kind}"
    tol = 1e-9  # LP solutions, float64

    # Eq. 36: delta_x with Delta(u, delta_x) = x exists (Lemma 1, constructive)
    plan_x, w_ux = optimal_flow_plan(u, x, solver="network")
    ut, xt = torch.from_numpy(u), torch.from_numpy(x)
    claims.close(
        "Theorem 1 (Eq. 36): Delta(u, delta_x) = x", apply_flow(ut, plan_x), xt, rtol=0, atol=tol, case=case
    )
    claims.close(
        "Theorem 1 (Eq. 36): ||delta_x||_1 = W1(u, x)",
        plan_x.l1_norm(),
        w1(u, x),
        rtol=1e-9,
        atol=tol,
        case=case,
    )

    # Eq. 40: x~ at a small W1 distance; delta_x~ = delta* + delta_x, ||delta_x~ - delta_x||_1 = W1(x, x~)
    x_tilde = 0.8 * x + 0.2 * _distribution(rng, c, h, w, "dense") * x.sum((1, 2), keepdims=True) * c
    x_tilde *= x.sum((1, 2), keepdims=True) / x_tilde.sum((1, 2), keepdims=True)
    plan_star, w_xx = optimal_flow_plan(x, x_tilde, solver="network")
    d_tilde = FlowPlan(plan_star.vertical + plan_x.vertical, plan_star.horizontal + plan_x.horizontal)
    claims.close(
        "Theorem 1 (Eq. 40): Delta(u, delta_x~) = x~",
        apply_flow(ut, d_tilde),
        x_tilde,
        rtol=0,
        atol=tol,
        case=case,
    )
    diff = FlowPlan(d_tilde.vertical - plan_x.vertical, d_tilde.horizontal - plan_x.horizontal)
    claims.close(
        "Theorem 1 (Eq. 40): ||delta_x~ - delta_x||_1 = W1(x, x~)",
        diff.l1_norm(),
        w1(x, x_tilde),
        rtol=1e-9,
        atol=tol,
        case=case,
    )

    # Eqs. 39 and 41, sample by sample: Delta(x, d) = Delta(u, delta_x + d) and f = f_flow
    n = 2000
    d = sample_laplace_flow((n, c, h, w), 0.05, seed=7, dtype=torch.float64)
    via_x = apply_flow_unchecked(xt.expand(n, c, h, w), d.vertical, d.horizontal)
    via_u = apply_flow_unchecked(
        ut.expand(n, c, h, w), plan_x.vertical + d.vertical, plan_x.horizontal + d.horizontal
    )
    claims.close(
        "Theorem 1 (Eq. 41): Delta(x, d) = Delta(u, delta_x + d)", via_x, via_u, rtol=0, atol=tol, case=case
    )
    torch.manual_seed(0)
    f = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 4)).double()
    with torch.no_grad():
        pred_x, pred_flow = f(via_x).argmax(1), f(via_u).argmax(1)
    agree = int((pred_x == pred_flow).sum())
    claims.close(
        "Theorem 1 (Eq. 41): f(Delta(x, d)) = f_flow(delta_x + d) per draw",
        agree,
        n,
        rtol=0,
        atol=0,
        case=case,
    )
    assert w_ux >= 0 and w_xx >= 0


# --- 3. statistical soundness on a 3x3 grid ---------------------------------------------------


def project_l1_ball(v: torch.Tensor, radius: float) -> torch.Tensor:
    """Euclidean projection onto {||v||_1 <= radius} (Duchi et al., 2008)."""
    if float(v.abs().sum()) <= radius:
        return v
    u = v.abs().flatten().sort(descending=True).values
    css = u.cumsum(0)
    k = torch.arange(1, u.numel() + 1, dtype=v.dtype)
    rho = int(torch.nonzero(u * k > css - radius).max())
    theta = (css[rho] - radius) / (rho + 1)
    return torch.sign(v) * (v.abs() - theta).clamp_min(0)


class Tiny(nn.Module):
    """A fixed 3-class classifier on 3x3 images: linear scores of the normalised image, then a ReLU layer."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.w1 = nn.Parameter(torch.randn(9, 6, generator=g, dtype=torch.float64) * 8, requires_grad=False)
        self.w2 = nn.Parameter(torch.randn(6, 3, generator=g, dtype=torch.float64), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xn = x.flatten(1) / x.flatten(1).sum(1, keepdim=True)
        return torch.relu((xn - 1 / 9) @ self.w1 + 0.3) @ self.w2


def candidate_plans(x: torch.Tensor, label: int, rho: float, sigma: float, seed: int) -> list[FlowPlan]:
    """Flow plans of L1 norm <= rho aimed at lowering p_label: ball vertices, random boundary plans, PGD."""
    n_v, n_h = 6, 6
    plans: list[torch.Tensor] = []
    for k in range(n_v + n_h):  # vertices: all of the budget on one flow variable
        for s in (rho, -rho):
            e = torch.zeros(n_v + n_h, dtype=torch.float64)
            e[k] = s
            plans.append(e)
    r = sample_laplace_flow((16, 1, 3, 3), 1.0, seed=seed, index=0, dtype=torch.float64)
    for k in range(16):  # random plans on the boundary
        e = torch.cat([r.vertical[k].flatten(), r.horizontal[k].flatten()])
        plans.append(e * (rho / e.abs().sum()))
    # PGD on a smooth surrogate of p_label with common random numbers
    net = Tiny()
    xn = x / x.sum()
    noise = sample_laplace_flow((512, 1, 3, 3), sigma, seed=seed, index=1, dtype=torch.float64)
    for start in range(2):
        e = plans[start * 7].clone().requires_grad_(True)
        for _ in range(40):
            v, h = e[:n_v].view(1, 1, 2, 3), e[n_v:].view(1, 1, 3, 2)
            noisy = apply_flow_unchecked(xn.expand(512, 1, 3, 3), noise.vertical + v, noise.horizontal + h)
            surrogate = torch.softmax(net(noisy) / 0.05, dim=1)[:, label].mean()
            (grad,) = torch.autograd.grad(surrogate, e)
            with torch.no_grad():
                step = e - 0.25 * rho * grad / grad.abs().max().clamp_min(1e-30)
                e = project_l1_ball(step, rho).requires_grad_(True)
        plans.append(e.detach())
    return [FlowPlan(p[:n_v].view(1, 2, 3), p[n_v:].view(1, 3, 2)) for p in plans]


def p_upper(sm: WassersteinSmoothing, x: torch.Tensor, label: int, n: int, alpha: float, index: int) -> float:
    """One-sided (1 - alpha) upper confidence bound on P(f(noisy x) = label), from noise stream ``index``."""
    k = int(sm.sample_counts(x, n, index=index)[label])
    return 1.0 - lower_confidence_bound(n - k, n, alpha)


@pytest.fixture
def one_thread():
    """Tiny tensors: intra-op threads only add scheduling noise (and stall on a loaded machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_no_flip_inside_the_certified_ball_and_flips_outside(claims, one_thread):
    sigma, n0, n, alpha = 0.02, 500, 20_000, 1e-3
    n_test, alpha_test, outside = 10_000, 1e-6, 6
    sm = WassersteinSmoothing(Tiny(), 3, sigma, seed=0, batch_size=20_000, device="cpu")
    fresh = itertools.count(10_000)  # every upper bound draws its own noise stream
    rng = np.random.default_rng(0)
    certified, flips_outside, searched = 0, 0, 0
    for point in range(40):
        x = torch.from_numpy(0.08 + 0.1 * rng.random((1, 3, 3))) * 2.5  # every pixel >= 0.068 of the mass
        xn_min = float((x / x.sum()).min())
        pred, p_lower, rho = sm.certify(x, n0, n, alpha, index=point)
        if pred < 0 or not (0.6 < p_lower < 0.995) or outside * rho >= xn_min:
            continue  # moderate radii, and perturbed images stay non-negative even at 6 rho
        certified += 1
        assert rho == certified_radius(p_lower, sigma)
        mass = x.sum()
        worst = 1.0
        for plan in candidate_plans(x, pred, rho, sigma, seed=point):
            x_tilde = apply_flow(x, FlowPlan(plan.vertical * mass, plan.horizontal * mass))
            worst = min(worst, p_upper(sm, x_tilde, pred, n_test, alpha_test, next(fresh)))
            searched += 1
        # Theorem 1 with p_B <= 1 - p_A gives p_A(x~) >= 1/2 on the whole ball; fail only on strong evidence
        claims.leq(
            "Theorem 1: no flip inside the certified W1 ball (statistical)",
            0.5,
            worst,
            atol=0.0,
            case=f"point {point} rho={rho:.2e} p_lower={p_lower:.3f}",
        )
        # power: the same search at 6 rho finds significant flips (the bound is ~4x conservative here)
        best_outside = min(
            p_upper(
                sm,
                apply_flow(x, FlowPlan(p.vertical * mass, p.horizontal * mass)),
                pred,
                n_test,
                alpha_test,
                next(fresh),
            )
            for p in candidate_plans(x, pred, outside * rho, sigma, seed=point)
        )
        flips_outside += best_outside < 0.5
        if certified == 5:
            break
    claims.true(
        "Theorem 1: no flip inside the certified W1 ball (statistical)", certified == 5, case="5 points"
    )
    claims.true(
        "Theorem 1: the attack finds flips at 6x the radius (search has power)",
        flips_outside >= 3,
        case=f"{flips_outside}/{certified} points flipped; {searched} plans inside the balls",
    )
