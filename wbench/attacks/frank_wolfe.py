"""Wu, Wang & Yu's Frank-Wolfe attack with the dual linear minimisation oracle (ICML 2020).

The attack works on a local transport plan ``P`` (mass at pixel ``i`` sent to ``i + offset_k``
within a ``k x k`` window) with rows fixed to the normalised clean image, ``P 1 = x / m``, and
budget ``<P, C> <= eps``; the adversarial image is ``m P^T 1``. Each iteration:

1. the gradient ``G`` of the loss with respect to ``P`` (scaled to unit max-norm, as the authors);
2. the entropy-regularised linear maximisation oracle over the transport ball (their Eq. 14-17,
   ``lmo.entr_support_func``): ``max <P, G> + gamma H(P)`` subject to the rows and the budget, whose
   solution for a dual variable ``lambda >= 0`` is ``P_i = x_i softmax_k((G_ik - lambda C_k) / gamma)``;
   ``lambda`` is found by bisection on ``<P(lambda), C> - eps`` from the bound
   ``2 ||G||_inf + gamma log(<x, C 1> / eps)``, returning the upper end, where the budget holds;
3. the Frank-Wolfe step ``P <- P + 2 / (t + 2) (P* - P)``.

Every oracle output and hence every iterate satisfies ``<P, C> <= eps``; with ``C`` the ground
distance of each offset, ``<P, C>`` bounds the exact W1 between the clean and adversarial images
from above. Nothing is clipped (as the authors: "do not clip the adversarial examples to preserve
pixel mass"). Offsets that leave the image get no mass (masked, instead of the authors' cost
``10**6``). Defaults follow ``bash/test_frank_wolfe.sh``: kernel 5, 300 iterations, ``gamma = 1e-3``,
50 bisection steps, tolerances ``1e-4``.

References
----------
.. [1] K. Wu, A. H. Wang, Y. Yu. "Stronger and Faster Wasserstein Adversarial Attacks."
   ICML 2020, Algorithm 2 and Section 4; watml/fast-wasserstein-adversarial.
"""

from __future__ import annotations

import math

import torch

from wbench.attacks.method_options import method_config
from wbench.attacks.objective import Objective, Progress, frozen_update
from wbench.attacks.sinkhorn import cost_kernel
from wbench.attacks.windows import fold_columns, window_columns
from wbench.options import Ground

DEFAULTS: dict[str, float | int] = {
    "steps": 300,
    "kernel_size": 5,
    "gamma": 1e-3,
    "dual_iters": 50,
    "grad_tol": 1e-4,
    "int_tol": 1e-4,
}


def linear_oracle(
    g: torch.Tensor,
    x_n: torch.Tensor,
    cost: torch.Tensor,
    valid: torch.Tensor,
    eps: torch.Tensor,
    *,
    gamma: float,
    dual_iters: int,
    grad_tol: float,
    int_tol: float,
) -> torch.Tensor:
    """The entropic LMO over ``{P >= 0, P 1 = x_n, <P, C> <= eps}`` for gradient ``g`` (B, C, k*k, H*W).

    ``grad_tol`` is relative to ``eps`` (the authors' absolute tolerance was in pixel-mass units).
    The returned plan always satisfies the budget: if the bisection's upper bound were not feasible
    it is doubled until it is. Only the rows of pixels with mass are formed (the others are 0: a
    digit has about a fifth of its pixels lit); the budget test evaluates exactly the rows returned.
    """
    b, c, kk, hw = g.shape
    lit = (x_n > 0).flatten(2)  # (B, C, H*W): the rows that carry mass
    example = lit.nonzero()[:, 0]  # the example of each lit row
    x_lit = x_n.flatten(2)[lit][:, None]
    logit_g = (g / gamma).masked_fill(~valid, -math.inf).transpose(2, 3)[lit]  # (rows, k*k)
    cost_g = cost[None, :] / gamma

    def rows(lam: torch.Tensor) -> torch.Tensor:  # x_i softmax_k((G_ik - lam C_k) / gamma)
        return x_lit * torch.softmax(torch.addcmul(logit_g, lam[example][:, None], cost_g, value=-1), dim=1)

    def excess(lam: torch.Tensor) -> torch.Tensor:
        per_row = x_n.new_zeros(b, c, hw)
        per_row[lit] = rows(lam) @ cost  # a deterministic sum per example, on any device
        return per_row.flatten(1).sum(1) - eps

    row_cost = (x_n.flatten(2).unsqueeze(2) * cost[None, None, :, None] * valid).flatten(1).sum(1)
    g_inf = g.abs().flatten(1).amax(1)
    lo = torch.zeros_like(eps)
    hi = (2 * g_inf + gamma * torch.log((row_cost / eps).clamp(min=1.0))).clamp(min=gamma)
    for _ in range(60):  # the bound holds in theory; make sure in floating point
        bad = excess(hi) > 0
        if not bool(bad.any()):
            break
        hi = torch.where(bad, 2 * hi, hi)
    for _ in range(dual_iters):
        mid = (lo + hi) / 2
        e = excess(mid)
        lo, hi = torch.where(e > 0, mid, lo), torch.where(e > 0, hi, mid)
        if bool((e.abs() < grad_tol * eps).all()) or float((hi - lo).max()) < int_tol:
            break
    out = g.new_zeros(b, c, hw, kk)
    out[lit] = rows(hi)
    return out.transpose(2, 3)


def run(
    objective: Objective,
    x: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    ground: Ground,
    steps: int | None,
    *,
    progress: Progress | None = None,
    **options: float,
) -> torch.Tensor:
    """Frank-Wolfe with the dual LMO (module docstring); options: ``kernel_size``, ``gamma``,
    ``dual_iters``, ``grad_tol``, ``int_tol``. ``progress``, if given, is called with 1 after every
    iteration. Returns adversarial images in mass units."""
    cfg = method_config(
        "frank_wolfe", DEFAULTS, options, positive=("gamma", "grad_tol", "int_tol"), counts=("dual_iters",)
    )
    steps = int(cfg["steps"]) if steps is None else steps
    ks = cfg["kernel_size"]
    cost = cost_kernel(ks, ground, 1.0, dtype=x.dtype, device=x.device)
    b, c, hgt, wid = x.shape
    mass = x.flatten(1).sum(1).view(-1, 1, 1, 1)
    x_n = x / mass
    valid = window_columns(torch.ones_like(x[:1, :1]), ks, 0.0) > 0  # (1, 1, k*k, H*W)
    pi = torch.zeros(b, c, ks * ks, hgt * wid, dtype=x.dtype, device=x.device)
    pi[:, :, ks * ks // 2, :] = x_n.flatten(2)  # the identity plan: the clean image
    budget = torch.full((b,), eps, dtype=x.dtype, device=x.device)
    done = torch.zeros(b, dtype=torch.bool, device=x.device)
    for t in range(steps):
        act = (~done).nonzero().squeeze(1)
        if act.numel() == 0:
            break
        pa = pi[act].requires_grad_(True)
        adv = fold_columns(pa, (act.numel(), c, hgt, wid), ks) * mass[act]
        loss, fooled = objective.loss(adv, labels[act], act)
        (g,) = torch.autograd.grad(loss.sum(), pa)
        with torch.no_grad():
            move = frozen_update(done, act, fooled)  # the fooled keep their current plan
            if bool(move.any()):
                act, pa, g = act[move], pa[move], g[move]
                g = g / (g.abs().flatten(1).amax(1).view(-1, 1, 1, 1) + 1e-35)
                star = linear_oracle(
                    g, x_n[act], cost, valid, budget[act], gamma=cfg["gamma"], dual_iters=cfg["dual_iters"],
                    grad_tol=cfg["grad_tol"], int_tol=cfg["int_tol"],
                )  # fmt: skip
                pi[act] = pa + 2.0 / (t + 2) * (star - pa)
        if progress is not None:
            progress(1)
    with torch.no_grad():
        return fold_columns(pi, tuple(x.shape), ks) * mass
