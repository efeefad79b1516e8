"""The attacks' fast paths equal straightforward references on seeded inputs.

- the L1-ball projection (Michelot's fixed point) against the sort-based rule of Duchi et al.;
- the flow attack (flat plans, no gather while every example is active) against the plain loop;
- the separable window sums of the projected Sinkhorn iteration against the full ``k x k`` window,
  and the restructured iteration (two window passes) against the released algorithm's order;
- the cost kernel: at least the ground distance on every offset, Wong et al.'s cost for ``p = 2``;
- the progress callback of :func:`wbench.attack`.
"""

from __future__ import annotations

import math

import pytest
import torch

from wbench import attack
from wbench.attacks import flow
from wbench.attacks.core import planned_steps
from wbench.attacks.flow import feasible_flow, project_l1_ball
from wbench.attacks.objective import Objective, frozen_update
from wbench.attacks.sinkhorn import cost_kernel, lambertw_exp, projected_sinkhorn
from wbench.attacks.windows import WindowKernel, fold_columns, window_columns
from wbench.flow import apply_flow_unchecked
from wbench.models import build_model
from wbench.options import Ground

# (rtol, atol) of the comparisons per dtype: different summation orders of the same sums
TOL = {torch.float64: (1e-10, 1e-12), torch.float32: (2e-4, 1e-6)}


def reference_project_l1_ball(u: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Duchi et al. (2008), Figure 1: sort, cumulative sums, the last index that stays positive."""
    a = u.abs()
    srt = a.sort(dim=1, descending=True).values
    css = srt.cumsum(1)
    j = torch.arange(1, u.shape[1] + 1, dtype=u.dtype)
    rho = ((srt - (css - radius[:, None]) / j) > 0).to(torch.int64).cumsum(1).argmax(1)
    theta = ((css.gather(1, rho[:, None]).squeeze(1) - radius) / (rho + 1).to(u.dtype)).clamp(min=0)
    w = u.sign() * (a - theta[:, None]).clamp(min=0)
    return torch.where((a.sum(1) <= radius)[:, None], u, w)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_l1_projection_equals_the_sort_based_rule(dtype):
    g = torch.Generator().manual_seed(4)
    u = torch.randn(64, 1512, generator=g, dtype=torch.float64).to(dtype)
    u[:8] *= (torch.rand(8, 1512, generator=g) > 0.9).to(dtype)  # sparse rows, many exact zeros
    u[8:12] = u[8:12].abs().round()  # ties
    radius = torch.rand(64, generator=g, dtype=torch.float64).to(dtype) * 30
    radius[:4] = 1e6  # inside the ball: returned unchanged
    got, ref = project_l1_ball(u, radius), reference_project_l1_ball(u, radius)
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(got, ref, rtol=rtol, atol=atol * float(radius[4:].max()))
    torch.testing.assert_close(got[:4], u[:4], rtol=0, atol=0)
    norms = got.abs().sum(1)
    torch.testing.assert_close(norms[4:], radius[4:], rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=0)


def reference_flow_run(objective, x, labels, eps, steps, step=0.25):
    """The flow attack as a plain loop: gather the active examples, concatenate, sort-project."""
    b, c, hgt, wid = x.shape
    mass = x.flatten(1).sum(1).view(-1, 1, 1, 1)
    x_n = x / mass
    nv = c * (hgt - 1) * wid
    radius = torch.full((b,), eps * (1 - 128 * torch.finfo(x.dtype).eps), dtype=x.dtype)
    v, h = x.new_zeros(b, c, hgt - 1, wid), x.new_zeros(b, c, hgt, wid - 1)
    done = torch.zeros(b, dtype=torch.bool)
    for _ in range(steps):
        act = (~done).nonzero().squeeze(1)
        if act.numel() == 0:
            break
        va, ha = v[act].requires_grad_(True), h[act].requires_grad_(True)
        m = mass[act]
        loss, fooled = objective.loss(apply_flow_unchecked(x[act], va * m, ha * m), labels[act], act)
        gv, gh = torch.autograd.grad(loss.sum(), (va, ha))
        with torch.no_grad():
            move = frozen_update(done, act, fooled)
            if not bool(move.any()):
                continue
            act, va, ha, gv, gh = act[move], va[move], ha[move], gv[move], gh[move]
            g = torch.cat((gv.flatten(1), gh.flatten(1)), 1)
            g = g / g.norm(dim=1, keepdim=True).clamp(min=torch.finfo(g.dtype).tiny)
            d = torch.cat((va.flatten(1), ha.flatten(1)), 1) + step * radius[act, None] * g
            d = reference_project_l1_ball(d, radius[act])
            v[act], h[act] = feasible_flow(x_n[act], d[:, :nv].view_as(va), d[:, nv:].view_as(ha))
    return apply_flow_unchecked(x, v * mass, h * mass), v, h


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_flow_attack_equals_the_plain_loop(dtype):
    torch.manual_seed(0)
    net = build_model("digits_cnn", num_classes=10, width=4).to(dtype).eval()
    g = torch.Generator().manual_seed(5)
    x = (torch.rand(8, 1, 8, 8, generator=g) * (torch.rand(8, 1, 8, 8, generator=g) > 0.4)).to(dtype)
    x[:, 0, 0, 0] += 0.5
    with torch.no_grad():
        y = net(x).argmax(1)
    eps, steps = 0.3, 25
    adv_ref, v_ref, h_ref = reference_flow_run(Objective(net), x, y, eps, steps)
    with torch.no_grad():
        fooled = net(adv_ref).argmax(1) != y
    # both code paths ran: some examples were frozen on the way, others moved to the end
    assert 0 < int(fooled.sum()) < x.shape[0], f"{int(fooled.sum())} of {x.shape[0]} fooled"
    adv, plan = flow.run(Objective(net), x, y, eps, Ground.L1, steps)
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(plan.vertical, v_ref, rtol=rtol, atol=atol * eps)
    torch.testing.assert_close(plan.horizontal, h_ref, rtol=rtol, atol=atol * eps)
    torch.testing.assert_close(adv, adv_ref, rtol=rtol, atol=atol)


def _log_potentials(dtype, n=3, size=9, seed=6):
    """Log-potentials of the sizes the iteration meets (hundreds, from lam * y), with -inf pixels."""
    g = torch.Generator().manual_seed(seed)
    v = (torch.randn(n, 2, size, size, generator=g, dtype=torch.float64) * 300).to(dtype)
    v[torch.rand(v.shape, generator=g) > 0.6] = -math.inf
    v[0, 0] = -math.inf  # a whole empty channel
    psi = torch.tensor([0.0, 1.0, 250.0], dtype=dtype)[:n]
    return v, psi


SEPARABLE = [(Ground.L2, 2.0), (Ground.L1, 2.0), (Ground.L1, 1.0)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ground, p", SEPARABLE)
@pytest.mark.parametrize("ks", [3, 7])
def test_separable_window_sums_equal_the_full_window(dtype, ground, p, ks):
    cost = cost_kernel(ks, ground, p, dtype=dtype, device="cpu")
    fast, full = WindowKernel(cost), WindowKernel(cost, separable=False)
    assert fast.separable and not full.separable
    v, psi = _log_potentials(dtype)
    rtol, atol = TOL[dtype]
    lse = fast.lse(v, psi)
    torch.testing.assert_close(lse, full.lse(v, psi), rtol=rtol, atol=atol)
    assert bool((lse[0, 0] == -math.inf).all())
    got, ref = fast.moments(v, psi), full.moments(v, psi)
    torch.testing.assert_close(got[0], ref[0], rtol=rtol, atol=atol)
    # the mean cost and mean squared cost of each window's plan: terms below tiny times the
    # window's largest may be kept at that floor by the separable passes (the sums are unchanged)
    lit = torch.isfinite(ref[0])
    c_max = float(cost.max())
    for m in (1, 2):
        mean_got, mean_ref = torch.exp(got[m] - got[0])[lit], torch.exp(ref[m] - ref[0])[lit]
        torch.testing.assert_close(mean_got, mean_ref, rtol=rtol, atol=atol * c_max**m)
    # the plan: rows X softmax(log K + v) with finite v (the iteration's -beta is finite)
    v_fin = torch.where(torch.isfinite(v), v, torch.zeros_like(v))
    x = torch.rand(v.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64).to(dtype)
    x[x < 0.3] = 0
    z, cost_fast = fast.plan(x, v_fin, psi)
    z_ref, cost_full = full.plan(x, v_fin, psi)
    torch.testing.assert_close(z, z_ref, rtol=rtol, atol=atol)
    torch.testing.assert_close(cost_fast, cost_full, rtol=rtol, atol=atol)
    torch.testing.assert_close(z.sum(dim=(2, 3)), x.sum(dim=(2, 3)), rtol=10 * torch.finfo(dtype).eps, atol=0)


def test_a_non_separable_cost_is_refused_by_the_separable_passes():
    cost = cost_kernel(5, Ground.L2, 1.0, dtype=torch.float64, device="cpu")  # Euclidean distance
    assert not WindowKernel(cost).separable
    with pytest.raises(ValueError, match="not additively separable"):
        WindowKernel(cost, separable=True)


def test_cost_kernel_dominates_the_ground_distance_and_is_wongs_for_p2():
    for ground in Ground:
        for p in (1.0, 1.5, 2.0, 3.0):
            c = cost_kernel(7, ground, p, dtype=torch.float64, device="cpu").view(7, 7)
            d = torch.arange(-3, 4, dtype=torch.float64)
            di, dj = torch.meshgrid(d, d, indexing="ij")
            dist = di.abs() + dj.abs() if ground is Ground.L1 else torch.sqrt(di**2 + dj**2)
            assert bool((c >= dist).all()), (ground, p)
            if p == 2.0:  # locuslab/projected_sinkhorn wasserstein_cost(p=2)
                torch.testing.assert_close(c, di**2 + dj**2, rtol=0, atol=0)


def reference_projected_sinkhorn(x, y, cost, eps, lam, max_iter):
    """The iteration in the released code's order: alpha, beta, Newton over the full plan, objective."""
    n, ks = x.shape[0], math.isqrt(cost.numel())
    log_c, log_x = torch.log(cost), torch.log(x)
    na = torch.full_like(x, math.log(x[0].numel()))
    nb = na.clone()
    psi = x.new_ones(n)

    def lse(v, log_k):
        cols = window_columns(v, ks, -math.inf) + log_k[:, None, :, None]
        return torch.logsumexp(cols, dim=2).view_as(v)

    log_k = -psi[:, None] * cost[None, :] - 1.0
    old = None
    for _ in range(max_iter):
        na = log_x - lse(nb, log_k)
        nb = lam * y - lambertw_exp(math.log(lam) + lam * y + lse(na, log_k))
        log_p = window_columns(nb, ks, -math.inf) + na.flatten(2).unsqueeze(2)
        terms = log_p + log_k[:, None, :, None]
        first = torch.logsumexp((terms + log_c[None, None, :, None]).flatten(1), dim=1)
        second = torch.logsumexp((terms + 2 * log_c[None, None, :, None]).flatten(1), dim=1)
        delta = (torch.exp(first) - eps) / -torch.exp(second).clamp(min=torch.finfo(x.dtype).tiny)
        t = torch.ones_like(psi)
        for _ in range(7):
            t = torch.where(psi - t * delta < 0, t / 2, t)
        psi = (psi - t * delta).clamp(min=0.0, max=1e30)
        log_k = -psi[:, None] * cost[None, :] - 1.0
        mass = torch.exp(torch.logsumexp((log_p + log_k[:, None, :, None]).flatten(1), dim=1))
        obj = (
            -0.5 / lam * (nb * nb).flatten(1).sum(1) - psi * eps
            + (torch.where(x > 0, na, 0.0) * x).flatten(1).sum(1) + (nb * y).flatten(1).sum(1) - mass
        )  # fmt: skip
        if old is not None and bool(((obj - old).abs() <= 1e-4 + 1e-4 * old.abs()).all()):
            break
        old = obj
    cols = window_columns(nb, ks, -math.inf) + log_k[:, None, :, None]
    rows = torch.exp(log_x.flatten(2).unsqueeze(2) + torch.log_softmax(cols, dim=2))
    return fold_columns(rows, tuple(x.shape), ks), (rows * cost[None, None, :, None]).flatten(1).sum(1)


def _projection_problem(dtype, seed=8):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(3, 1, 10, 10, generator=g, dtype=torch.float64)
    x = x * (torch.rand(3, 1, 10, 10, generator=g) > 0.5)
    x[:, 0, 4, 4] += 1.0
    mass = x.flatten(1).sum(1).view(-1, 1, 1, 1)
    y = (x + 0.1 * torch.randn(x.shape, generator=g, dtype=torch.float64).sign()) / mass
    return (x / mass).to(dtype), y.to(dtype), torch.tensor([0.05, 0.3, 2.0], dtype=dtype)


@pytest.mark.parametrize("ground, p", [(Ground.L2, 2.0), (Ground.L1, 1.0), (Ground.L2, 1.0)])
def test_projected_sinkhorn_equals_the_released_order_of_updates(ground, p):
    x, y, eps = _projection_problem(torch.float64)
    cost = cost_kernel(5, ground, p, dtype=torch.float64, device="cpu")
    z, pc = projected_sinkhorn(x, y, cost, eps, 1000.0, max_iter=60)
    # each example stops at its own convergence: the reference's batch stop, one example at a time
    ref = [
        reference_projected_sinkhorn(x[i : i + 1], y[i : i + 1], cost, eps[i : i + 1], 1000.0, 60)
        for i in range(3)
    ]
    z_ref, pc_ref = torch.cat([r[0] for r in ref]), torch.cat([r[1] for r in ref])
    torch.testing.assert_close(z, z_ref, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(pc, pc_ref, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ground, p", SEPARABLE)
def test_projected_sinkhorn_separable_equals_general(dtype, ground, p):
    x, y, eps = _projection_problem(dtype)
    cost = cost_kernel(7, ground, p, dtype=dtype, device="cpu")
    z, pc = projected_sinkhorn(x, y, cost, eps, 1000.0, max_iter=60, separable=True)
    z_ref, pc_ref = projected_sinkhorn(x, y, cost, eps, 1000.0, max_iter=60, separable=False)
    rtol, atol = {torch.float64: (1e-8, 1e-10), torch.float32: (1e-3, 1e-5)}[dtype]
    torch.testing.assert_close(z, z_ref, rtol=rtol, atol=atol)
    torch.testing.assert_close(pc, pc_ref, rtol=rtol, atol=atol)
    assert bool((z >= 0).all() and torch.isfinite(z).all())


@pytest.mark.parametrize("method", ["flow", "sinkhorn", "frank_wolfe"])
def test_progress_is_called_once_per_iteration(method):
    torch.manual_seed(0)
    net = build_model("digits_cnn", num_classes=10, width=4).eval()
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        y = net(x).argmax(1)
    calls = []
    opts = {"sinkhorn_iters": 5} if method == "sinkhorn" else {}
    attack(net, x, y, 1e-4, method, steps=3, progress=calls.append, **opts)  # too small a budget to fool
    assert calls == [1, 1, 1]
    assert planned_steps(method, 3) == 3
    with pytest.raises(ValueError, match="progress must be callable"):
        attack(net, x, y, 1e-4, method, steps=1, progress=3, **opts)


def test_planned_steps_are_the_presets():
    assert planned_steps("flow") == flow.DEFAULTS["steps"]
    assert planned_steps("sinkhorn", preset="cifar") == 400
    assert planned_steps("sinkhorn") == 200
    with pytest.raises(ValueError, match="unknown sinkhorn preset"):
        planned_steps("sinkhorn", preset="imagenet")


@pytest.mark.parametrize("separable", [True, False])
@pytest.mark.parametrize("lam", [1000.0, 3000.0])
def test_both_window_paths_stay_finite_in_float32_at_extreme_masses(separable, lam):
    """One lit pixel or a full image, masses 1e-3 to 50: lam * y reaches lam; nothing overflows."""
    g = torch.Generator().manual_seed(10)
    one = torch.zeros(1, 1, 8, 8)
    one[0, 0, 4, 4] = 1.0
    x = torch.cat([one, torch.ones(1, 1, 8, 8)]).repeat(3, 1, 1, 1)
    x = x * torch.tensor([1e-3, 1e-3, 1.0, 1.0, 50.0, 50.0]).view(-1, 1, 1, 1)
    mass = x.flatten(1).sum(1).view(-1, 1, 1, 1)
    y = (x + 0.1 * torch.randn(x.shape, generator=g).sign()) / mass
    cost = cost_kernel(7, Ground.L2, 2.0, dtype=torch.float32, device="cpu")
    for eps in (1e-4, 0.5):
        z, plan_cost = projected_sinkhorn(
            x / mass, y, cost, torch.full((6,), eps), lam, max_iter=30, separable=separable
        )
        assert bool(torch.isfinite(z).all() and torch.isfinite(plan_cost).all())
        assert bool((z >= 0).all())
        torch.testing.assert_close(z.flatten(1).sum(1), torch.ones(6), rtol=1e-5, atol=0)
