"""The flow-space attack: projected gradient ascent over local flow plans (Levine & Feizi, Lemma 1).

The adversarial image is ``m * Delta(x / m, delta)`` (Definition 3.1, ``m`` the image's mass) for
a local flow plan ``delta`` in the convex set

    D = { delta :  ||delta||_1 <= eps,   Delta(x / m, delta) >= 0 }.

By Lemma 1 (Eq. 22) the W1 distance with L1 ground between ``x / m`` and ``Delta(x / m, delta)``
is the *minimum* of ``||delta'||_1`` over the plans that produce it, hence at most
``||delta||_1 <= eps``: every iterate lies in the exact W1 ball by construction, with no solver
in the loop. Corollary 2: colour channels carry separate plans and their norms add.

With the L2 (Euclidean) ground metric the same set is used with the same ``eps``: the Euclidean
distance between two pixels is at most their L1 distance (Eq. 72 vs Eq. 73), so
``W1_L2 <= W1_L1 <= ||delta||_1 <= eps``. Corollary 3 states the other inequality,
``W1_L1 <= sqrt(2) W1_L2``, which is why a *certificate* divides by sqrt(2); an attack budget
multiplied by sqrt(2) would leave the L2 ball, so the L2 attack searches the inscribed set
(it may miss adversaries between W1_L1 = eps and sqrt(2) eps).

Each iteration: a gradient step on ``delta`` of L2 length ``step * eps``, the Euclidean
projection onto the L1 ball (Duchi et al., 2008), then a feasibility step for non-negativity:
every pixel whose out-flow exceeds its mass has all of its out-going flows scaled down by the
same factor. That step only shrinks flows, so the L1 constraint still holds, and afterwards each
pixel keeps ``x_p - out_p + in_p >= x_p - out_p >= 0``.
"""

from __future__ import annotations

import math

import torch

from wbench.attacks.objective import Objective, frozen_update
from wbench.flow import FlowPlan, apply_flow_unchecked
from wbench.options import Ground

DEFAULTS: dict[str, float | int] = {"steps": 100, "step": 0.25}
_ROUNDING_ULPS = 128
_FEASIBILITY_MARGIN = 1e-5  # out-flow is held at (1 - margin) of a pixel's mass: no negative rounding


def project_l1_ball(u: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row of ``u`` (B, n) onto ``{||w||_1 <= radius_b}`` (Duchi et al.'08)."""
    a = u.abs()
    inside = a.sum(1) <= radius
    srt = a.sort(dim=1, descending=True).values
    css = srt.cumsum(1)
    j = torch.arange(1, u.shape[1] + 1, dtype=u.dtype, device=u.device)
    cond = srt - (css - radius[:, None]) / j > 0
    rho = cond.to(torch.int64).cumsum(1).argmax(1)  # last index where cond holds (cond is a prefix)
    theta = ((css.gather(1, rho[:, None]).squeeze(1) - radius) / (rho + 1).to(u.dtype)).clamp(min=0)
    w = u.sign() * (a - theta[:, None]).clamp(min=0)
    return torch.where(inside[:, None], u, w)


def feasible_flow(x_n: torch.Tensor, v: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale down the out-flows of every pixel that would go negative, so that ``Delta(x_n, (v, h)) >= 0``.

    A positive ``v[i, j]`` leaves pixel (i+1, j), a negative one leaves (i, j); likewise for ``h``.
    Pixel ``p`` gets the factor ``min(1, (1 - 1e-5) x_p / out_p)``; each flow takes its source's.
    """
    out = torch.zeros_like(x_n)
    out[..., 1:, :] += v.clamp(min=0)
    out[..., :-1, :] += (-v).clamp(min=0)
    out[..., :, 1:] += h.clamp(min=0)
    out[..., :, :-1] += (-h).clamp(min=0)
    cap = (1 - _FEASIBILITY_MARGIN) * x_n
    scale = torch.where(out > cap, cap / torch.where(out > 0, out, 1), torch.ones_like(out))
    v = torch.where(v > 0, v * scale[..., 1:, :], v * scale[..., :-1, :])
    h = torch.where(h > 0, h * scale[..., :, 1:], h * scale[..., :, :-1])
    return v, h


def run(
    objective: Objective,
    x: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    ground: Ground,
    steps: int | None,
    **options: float,
) -> tuple[torch.Tensor, FlowPlan]:
    """Projected gradient ascent over the flow plans of ``D`` (module docstring).

    ``step``: L2 length of each gradient step as a fraction of ``eps`` (before projection).
    Returns the adversarial images (mass units) and their flow plans (normalised mass), with
    ``||plan||_1 <= eps`` per image and ``adversarial = m * Delta(x / m, plan)``.
    """
    unknown = set(options) - {"step"}
    if unknown:
        raise ValueError(f"unknown flow options {sorted(unknown)}; expected ['step']")
    step = options.get("step", DEFAULTS["step"])
    if not (isinstance(step, int | float) and math.isfinite(step) and step > 0):
        raise ValueError(f"flow option step must be a finite number > 0, got {step!r}")
    steps = int(DEFAULTS["steps"]) if steps is None else steps
    b, c, hgt, wid = x.shape
    mass = x.flatten(1).sum(1).view(-1, 1, 1, 1)
    x_n = x / mass
    nv = c * (hgt - 1) * wid
    # a few ulps below eps: the stored image is rounded to x.dtype, which moves W1 by ~1e-7 relative
    radius = torch.full(
        (b,), eps * (1 - _ROUNDING_ULPS * torch.finfo(x.dtype).eps), dtype=x.dtype, device=x.device
    )
    v = x.new_zeros(b, c, hgt - 1, wid)
    h = x.new_zeros(b, c, hgt, wid - 1)
    done = torch.zeros(b, dtype=torch.bool, device=x.device)
    for _ in range(steps):
        act = (~done).nonzero().squeeze(1)
        if act.numel() == 0:
            break
        va, ha = v[act].requires_grad_(True), h[act].requires_grad_(True)
        m = mass[act]
        loss, fooled = objective.loss(apply_flow_unchecked(x[act], va * m, ha * m), labels[act], act)
        gv, gh = torch.autograd.grad(loss.sum(), (va, ha))
        with torch.no_grad():
            move = frozen_update(done, act, fooled)  # the fooled keep their current plan
            if not bool(move.any()):
                continue
            act, va, ha, gv, gh = act[move], va[move], ha[move], gv[move], gh[move]
            g = torch.cat((gv.flatten(1), gh.flatten(1)), 1)
            g = g / g.norm(dim=1, keepdim=True).clamp(min=torch.finfo(g.dtype).tiny)
            d = torch.cat((va.flatten(1), ha.flatten(1)), 1) + step * radius[act, None] * g
            d = project_l1_ball(d, radius[act])
            v[act], h[act] = feasible_flow(x_n[act], d[:, :nv].view_as(va), d[:, nv:].view_as(ha))
    with torch.no_grad():
        adv = apply_flow_unchecked(x, v * mass, h * mass)
    return adv, FlowPlan(v, h)
