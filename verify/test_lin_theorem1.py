"""Lin et al. (2019), Theorem 1 with G^{-1} = L(x), and Example 4 (Bishop's Tikhonov term).

Theorem 1: for noise xi ~ N(0, eta^2 G^{-1}(x)) and a loss l twice differentiable in f,

    (E[l(f(x + xi))] - l(f(x))) / eta^2  ->  1/2 (l'' ||grad f||_G^2 + l' tr(G^{-1} Hess f))

as eta -> 0, where ||grad f||_G^2 = grad f^T G^{-1} grad f. With the Wasserstein metric G^{-1} = L(x)
(Appendix B) and the Lebesgue reference measure, the Laplace-Beltrami term is tr(L(x) Hess f) (Eq. 8).

Monte Carlo design. The noise is xi = eta * u with u = (Lambda^{1/2} D)^T z, z ~ N(0, I_|E|), so
Cov(u) = D^T Lambda D = L(x) exactly (Definition 1; no pseudo-inverse). Antithetic pairs +-u cancel
every odd Taylor term, so the per-pair estimate

    s(eta) = (h(x + eta u) + h(x - eta u) - 2 h(x)) / (2 eta^2),   h = l o f,

has mean RHS + O(eta^2). The same u are reused for every eta (common random numbers), so
differences between eta values are free of Monte Carlo noise. Checks:

1. per eta: |mean s(eta) - RHS| <= Z * SE(eta) + 2 |R(eta)|, with SE the Monte Carlo standard error
   and R(eta) = mean s(eta) - mean(u^T Hess h u)/2 the observed Taylor remainder on these samples.
   Its band holds the observed remainder, so it is a loose consistency check; the sharp ones are 3-4;
2. the remainder is O(eta^2): the observed order log2(R(eta)/R(eta/2)) lies in [1.5, 2.5];
3. the Richardson limit (4 s(eta/2) - s(eta))/3 matches RHS within Z * SE (its bias is O(eta^4),
   which the band does not include);
4. power: replacing L(x) by the identity, dropping the 1/2, or dropping the l'' term puts the
   Richardson limit outside that band, so the test can fail.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from wbench.gradnorm import (
    edge_weight_diagonal,
    incidence_matrix,
    wasserstein_grad_norm_sq,
    wasserstein_laplacian,
)

Z = 4.0  # two-sided false-alarm rate ~6e-5 per check under the normal approximation
ETAS = (0.1, 0.05, 0.025)
N_PAIRS = 400_000
DT = torch.float64


class SoftplusMLP:
    """f: R^n -> R, a two-layer softplus network with fixed seeded weights (float64)."""

    def __init__(self, n: int, hidden: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.w1 = torch.randn(n, hidden, generator=g, dtype=DT) / math.sqrt(n)
        self.b1 = 0.1 * torch.randn(hidden, generator=g, dtype=DT)
        self.w2 = torch.randn(hidden, generator=g, dtype=DT) / math.sqrt(hidden)
        self.b2 = 0.1 * torch.randn((), generator=g, dtype=DT)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return F.softplus(z @ self.w1 + self.b1) @ self.w2 + self.b2


def derivatives(fn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """f(x), grad f(x), Hess f(x) by autograd, for a flat x."""
    xr = x.detach().clone().requires_grad_(True)
    val = fn(xr)
    (grad,) = torch.autograd.grad(val, xr)
    hess = torch.autograd.functional.hessian(fn, x.detach())
    return val.detach(), grad, hess


def antithetic_estimates(h, x: torch.Tensor, u: torch.Tensor, eta: float) -> torch.Tensor:
    """Per-pair (h(x + eta u) + h(x - eta u) - 2 h(x)) / (2 eta^2)."""
    hx = h(x[None])
    out = []
    for chunk in u.split(100_000):
        out.append((h(x + eta * chunk) + h(x - eta * chunk) - 2 * hx) / (2 * eta**2))
    return torch.cat(out)


def check_second_order_expansion(
    claims, claim: str, h, x, u, hess_h, rhs, wrong: dict[str, float], case: str
):
    """Checks 1-4 of the module docstring for the estimator built from the noise samples u."""
    quad = 0.5 * ((u @ hess_h) * u).sum(1)  # the pure second-order term on the same samples
    s = {eta: antithetic_estimates(h, x, u, eta) for eta in ETAS}
    rem = {}
    for eta in ETAS:
        mean, se = float(s[eta].mean()), float(s[eta].std() / math.sqrt(len(u)))
        rem[eta] = mean - float(quad.mean())
        claims.close(
            f"{claim}: (E l(f(x+xi)) - l(f(x)))/eta^2 -> RHS",
            mean,
            rhs,
            rtol=0,
            atol=Z * se + 2 * abs(rem[eta]),
            case=f"{case} eta={eta}",
        )
    for big, small in zip(ETAS[:-1], ETAS[1:], strict=True):
        order = math.log(abs(rem[big] / rem[small])) / math.log(big / small)
        claims.close(
            f"{claim}: remainder is O(eta^2)", order, 2.0, rtol=0, atol=0.5, case=f"{case} {big}->{small}"
        )
    richardson = (4 * s[ETAS[-1]] - s[ETAS[-2]]) / 3
    lim, se_lim = float(richardson.mean()), float(richardson.std() / math.sqrt(len(u)))
    claims.close(f"{claim}: eta -> 0 limit = RHS", lim, rhs, rtol=0, atol=Z * se_lim, case=case)
    for what, value in wrong.items():
        claims.true(
            f"{claim}: wrong RHS rejected",
            abs(lim - value) > Z * se_lim,
            case=f"{case} {what}",
            detail=f"limit {lim:.5g} +- {Z * se_lim:.2g} vs {what} {value:.5g}",
        )


@pytest.mark.parametrize(
    "shape,radius,seed",
    [((1, 5, 4), 2, 0), ((2, 3, 3), 1, 1)],
    ids=["1x5x4-r2", "2x3x3-r1"],
)
def test_theorem1_wasserstein_noise(claims, shape, radius, seed):
    gen = torch.Generator().manual_seed(100 + seed)
    x_img = torch.rand(shape, generator=gen, dtype=DT) + 0.2
    x_img = x_img / x_img.sum((-2, -1), keepdim=True)  # a probability vector per channel
    n = x_img.numel()
    x = x_img.reshape(-1)
    f = SoftplusMLP(n, 12, seed)

    def h(z):  # l(u) = softplus(u): binary cross entropy of a logit u with label 0
        return F.softplus(f(z))

    lap = wasserstein_laplacian(x_img, radius)
    factor = edge_weight_diagonal(x_img, radius).sqrt()[:, None] * incidence_matrix(shape, radius)
    claims.close(
        "Thm 1: noise factor (Lambda^1/2 D)^T (Lambda^1/2 D) = L(x)",
        factor.T @ factor,
        lap,
        rtol=0,
        atol=1e-13 * float(lap.abs().max()),
        case=str(shape),
    )
    z = torch.randn(N_PAIRS, factor.shape[0], generator=gen, dtype=DT)
    u = z @ factor  # Cov(u) = L(x)

    fx, grad_f, hess_f = derivatives(f, x)
    sig = torch.sigmoid(fx)
    l1, l2 = float(sig), float(sig * (1 - sig))
    norm_w = float(wasserstein_grad_norm_sq(x_img[None], grad_f.reshape(1, *shape), radius, "conv")[0])
    trace_w = float(torch.trace(lap @ hess_f))
    rhs = 0.5 * (l2 * norm_w + l1 * trace_w)
    _, _, hess_h = derivatives(h, x)
    claims.close(
        "Thm 1: tr(L Hess l(f)) = l''||grad f||_W^2 + l' tr(L Hess f)",
        0.5 * float(torch.trace(lap @ hess_h)),
        rhs,
        rtol=1e-12,
        case=str(shape),
    )
    wrong = {
        "L -> I": 0.5 * (l2 * float(grad_f @ grad_f) + l1 * float(torch.trace(hess_f))),
        "no 1/2": 2 * rhs,
        "no l'' term": 0.5 * l1 * trace_w,
    }
    check_second_order_expansion(claims, "Thm 1", h, x, u, hess_h, rhs, wrong, f"{shape} r={radius}")


def test_example4_bishop_tikhonov(claims):
    """Euclidean noise N(0, eta^2 I) and square error: the limit is Bishop's Tikhonov term.

    With l = (f - y)^2, Theorem 1's 1/2 E^R is sum_i (df/dx_i)^2 + (f - y) d^2f/dx_i^2, which is
    what Example 4 prints as E^R (Examples 2 and 4 drop Theorem 1's factor 2 of l'' = 2, l' = 2(f - y)
    against its 1/2; the expansion below pins the coefficient to 1).
    """
    n, target = 12, 0.3
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(n, generator=gen, dtype=DT)
    f = SoftplusMLP(n, 10, 4)

    def h(z):
        return (f(z) - target) ** 2

    fx, grad_f, hess_f = derivatives(f, x)
    # Bishop's term, its second derivatives taken one coordinate at a time (not via a trace)
    second = []
    for i in range(n):
        xr = x.clone().requires_grad_(True)
        (gi,) = torch.autograd.grad(f(xr), xr, create_graph=True)
        (gii,) = torch.autograd.grad(gi[i], xr)
        second.append(gii[i])
    bishop = float((grad_f**2).sum() + (fx - target) * torch.stack(second).sum())
    theorem = 0.5 * (2 * float(grad_f @ grad_f) + 2 * float(fx - target) * float(torch.trace(hess_f)))
    claims.close("Ex. 4: Thm 1 with L = I is Bishop's Tikhonov term", theorem, bishop, rtol=1e-12)

    u = torch.randn(N_PAIRS, n, generator=gen, dtype=DT)  # Cov(u) = I
    _, _, hess_h = derivatives(h, x)
    wrong = {"factor 2 (E^R without 1/2)": 2 * bishop, "gradient term only": float(grad_f @ grad_f)}
    check_second_order_expansion(claims, "Ex. 4", h, x, u, hess_h, bishop, wrong, "12 inputs")
