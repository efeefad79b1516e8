"""Wong, Schmidt & Kolter's projected Sinkhorn attack (ICML 2019), in the log domain.

The attack is PGD: a signed-gradient step of size ``step`` (pixel units, their
``--norm linfinity --alpha 0.1``), then a projection of the iterate onto the local-transport
Wasserstein ball around the clean image by the projected Sinkhorn iteration (their
``log_sinkhorn(..., objective='2norm')``): the entropy-regularised problem

    min_Z  1/2 ||Z - Y||^2  s.t.  Z = P^T 1,  P 1 = X,  P >= 0,  <P, C> <= eps,

solved by block coordinate ascent on its dual (alpha, beta, psi), with ``beta`` given by the
Lambert W function (Wong et al., Eqs. 10-13). The ball radius starts at ``eps0`` and is
multiplied by ``growth`` every ``growth_every`` iterations for the examples not yet fooled,
capped at the budget ``eps`` (their ``epsilon_iters`` / ``epsilon_factor``).

Differences from the released code, all for numerical soundness:

- every quantity is a log-potential and every kernel product a log-sum-exp, and the Lambert W
  function is evaluated from the *logarithm* of its argument (:func:`lambertw_exp`); the released
  ``lamw(lam * exp(lam * Y) * ...)`` overflows float32 at ``lam = 1000`` once a normalised
  pixel exceeds ``88.7 / 1000``, which every 8x8 digit does;
- the returned image is the column marginal of the final plan, whose rows are renormalised to
  the clean image (``P 1 = X`` up to rounding), so it is non-negative and carries exactly the
  clean image's mass per channel; the released code returns ``beta / lam + Y`` and then clips to
  [0, 1], which changes the mass. Nothing is clipped here;
- the objective used for the stopping test is the dual of the paper (the released code passes its
  arguments in the wrong order); the Newton line search on ``psi`` halves each example's step
  separately.

The cost of moving mass by the offset ``d`` is ``ground(d) ** p``. For the integer offsets of a
pixel grid ``ground(d) ** p >= ground(d)`` when ``p >= 1``, so a plan inside this ball has exact W1
(under ``ground``) at most ``eps``: the preset's ``p = 2`` (Wong et al.'s default) is conservative,
``p = 1`` (Levine & Feizi's attack scripts) is the local-transport W1 ball itself.

References
----------
.. [1] E. Wong, F. R. Schmidt, J. Z. Kolter. "Wasserstein Adversarial Examples via Projected
   Sinkhorn Iterations." ICML 2019, Section 3 and Algorithm 2; locuslab/projected_sinkhorn.
.. [2] A. Levine, S. Feizi. AISTATS 2020, Appendix C (the attacks of Figure 7).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from wbench.attacks.objective import Objective, frozen_update
from wbench.options import Ground

PRESETS: dict[str, dict[str, float | int]] = {
    # attack_mnist.py: epsilon=0.7, maxiters=200, kernel_size=7, --reg 1000, --p 2, --alpha 0.1
    "mnist": {
        "lam": 1000.0, "kernel_size": 7, "p": 2.0, "eps0": 0.7, "growth": 1.1, "growth_every": 10,
        "steps": 200, "step": 0.1, "sinkhorn_iters": 400,
    },
    # attack_cifar.py: epsilon=0.001, epsilon_factor=1.17, maxiters=400, kernel_size=5, --reg 3000
    "cifar": {
        "lam": 3000.0, "kernel_size": 5, "p": 2.0, "eps0": 0.001, "growth": 1.17, "growth_every": 10,
        "steps": 400, "step": 0.1, "sinkhorn_iters": 400,
    },
}  # fmt: skip

_LAMBERTW_NEWTON_STEPS = 6
_PSI_MAX = 1e30  # keeps psi * C finite; psi beyond it means "no transport" to float precision
_LOG_FLOOR = -20.0  # below it W(e^s) = e^s to float32 precision


def lambertw_exp(s: torch.Tensor) -> torch.Tensor:
    """The principal Lambert W function at ``exp(s)``, for any real ``s`` (including ``-inf``).

    Solves ``w + log(w) = s`` by Newton's method in the form ``w <- w (1 + s - log w) / (1 + w)``
    from ``log1p(exp(s))`` (``s <= 1``) or ``s - log s`` (``s > 1``). The map ``w + log w`` is
    increasing and concave, so after the first step the iterates increase monotonically to the
    root and stay positive; the argument ``exp(s)`` is never formed, so ``s`` of any size is fine
    in float32. For ``s < -20``, ``W(e^s) = e^s`` to float32 precision.
    """
    sc = s.clamp(min=_LOG_FLOOR)
    w = torch.where(sc > 1, sc - torch.log(sc.clamp(min=1.0)), torch.log1p(torch.exp(sc.clamp(max=1.0))))
    for _ in range(_LAMBERTW_NEWTON_STEPS):
        w = (1 + sc - torch.log(w)) * (w / (1 + w))  # never forms w * s: no overflow
    return torch.where(s < _LOG_FLOOR, torch.exp(s), w)


def cost_kernel(kernel_size: int, ground: Ground, p: float, *, dtype, device) -> torch.Tensor:
    """``ground(offset) ** p`` for the ``kernel_size**2`` offsets of a local window, row-major."""
    if not (isinstance(kernel_size, int) and kernel_size >= 1 and kernel_size % 2 == 1):
        raise ValueError(f"kernel_size must be an odd positive integer, got {kernel_size!r}")
    if not (isinstance(p, int | float) and math.isfinite(p) and p >= 1):
        raise ValueError(f"p must be a number >= 1 (cost ground(d)**p), got {p!r}")
    r = kernel_size // 2
    d = torch.arange(-r, r + 1, dtype=torch.float64)
    di, dj = torch.meshgrid(d, d, indexing="ij")
    dist = di.abs() + dj.abs() if ground is Ground.L1 else torch.sqrt(di**2 + dj**2)
    return (dist**p).reshape(-1).to(dtype=dtype, device=device)


def window_columns(v: torch.Tensor, kernel_size: int, fill: float) -> torch.Tensor:
    """``cols[n, c, k, i] = v[n, c, i + offset_k]`` (``fill`` outside the image), shape (N, C, k*k, H*W)."""
    n, c, h, w = v.shape
    r = kernel_size // 2
    padded = F.pad(v.reshape(n * c, 1, h, w), (r, r, r, r), value=fill)
    return F.unfold(padded, kernel_size).view(n, c, kernel_size * kernel_size, h * w)


def fold_columns(cols: torch.Tensor, shape: tuple[int, ...], kernel_size: int) -> torch.Tensor:
    """The adjoint of :func:`window_columns`: ``out[j] = sum of cols[k, i] over i + offset_k = j``."""
    n, c, h, w = shape
    r = kernel_size // 2
    out = F.fold(cols.reshape(n * c, -1, h * w), (h + 2 * r, w + 2 * r), kernel_size)
    return out[:, :, r : r + h, r : r + w].reshape(n, c, h, w)


def _window_lse(logv: torch.Tensor, log_k: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """``log sum_k K_k exp(logv[i + offset_k])`` per pixel (the released code's ``mm(K, exp(v))``)."""
    cols = window_columns(logv, kernel_size, -math.inf) + log_k[:, None, :, None]
    return torch.logsumexp(cols, dim=2).view_as(logv)


def _row_plan(log_x: torch.Tensor, log_k: torch.Tensor, nb: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Plan rows ``P[i, k] = X_i softmax_k(log K_k - beta[i + offset_k])`` (rows sum to X)."""
    cols = window_columns(nb, kernel_size, -math.inf) + log_k[:, None, :, None]
    return torch.exp(log_x.flatten(2).unsqueeze(2) + torch.log_softmax(cols, dim=2))


def projected_sinkhorn(
    x: torch.Tensor,
    y: torch.Tensor,
    cost: torch.Tensor,
    eps: torch.Tensor,
    lam: float,
    *,
    max_iter: int = 400,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Project ``y`` onto the entropic local-transport ball of radius ``eps`` around ``x`` (Wong, Alg. 2).

    Parameters
    ----------
    x : torch.Tensor
        ``(N, C, H, W)`` normalised clean images: non-negative, each of total mass 1.
    y : torch.Tensor
        ``(N, C, H, W)`` points to project (any real values).
    cost : torch.Tensor
        ``(k*k,)`` cost of each offset of the ``k x k`` window (:func:`cost_kernel`).
    eps : torch.Tensor
        ``(N,)`` radii, in normalised mass times cost.
    lam : float
        Entropy regularisation ``lambda`` (the objective is scaled by it, as in the paper).

    Returns
    -------
    z : torch.Tensor
        The column marginal of the final plan: non-negative, with ``x``'s mass in every channel.
    plan_cost : torch.Tensor
        ``(N,)`` ``<P, C>`` of that plan, an upper bound on the W1 between ``x`` and ``z`` under
        any ground metric whose cost is at most ``cost``.
    """
    n = x.shape[0]
    ks = math.isqrt(cost.numel())
    log_c = torch.log(cost)  # -inf at offset 0
    log_x = torch.log(x)
    npix = x[0].numel()
    na = torch.full_like(x, math.log(npix))  # -alpha, -beta: the log scalings exp(-alpha), exp(-beta)
    nb = torch.full_like(x, math.log(npix))
    psi = x.new_ones(n)
    log_lam = math.log(lam)
    old_obj = None

    def log_k_of(psi: torch.Tensor) -> torch.Tensor:
        return -psi[:, None] * cost[None, :] - 1.0

    log_k = log_k_of(psi)
    for _ in range(max_iter):
        na = log_x - _window_lse(nb, log_k, ks)
        w = lambertw_exp(log_lam + lam * y + _window_lse(na, log_k, ks))
        nb = lam * y - w  # beta = W(lam e^{lam y} K^T e^{-alpha}) - lam y, Eq. 12
        # Newton step on psi (Eq. 13): derivatives of the dual in log-sum-exp form
        log_p = window_columns(nb, ks, -math.inf) + na.flatten(2).unsqueeze(2)  # log plan without K
        terms = log_p + log_k[:, None, :, None]
        first = torch.logsumexp((terms + log_c[None, None, :, None]).flatten(1), dim=1)
        second = torch.logsumexp((terms + 2 * log_c[None, None, :, None]).flatten(1), dim=1)
        dpsi = torch.exp(first) - eps
        ddpsi = -torch.exp(second).clamp(min=torch.finfo(x.dtype).tiny)
        delta = dpsi / ddpsi
        t = torch.ones_like(psi)
        for _ in range(7):  # halve until psi stays >= 0 (at most 2**-7, as the released code)
            t = torch.where(psi - t * delta < 0, t / 2, t)
        psi = (psi - t * delta).clamp(min=0.0, max=_PSI_MAX)
        log_k = log_k_of(psi)
        plan_mass = torch.exp(torch.logsumexp((log_p + log_k[:, None, :, None]).flatten(1), dim=1))
        beta = -nb
        obj = (  # the dual objective (Wong et al., Eq. 9, scaled by lambda)
            -0.5 / lam * (beta * beta).flatten(1).sum(1)
            - psi * eps
            + (torch.where(x > 0, na, 0.0) * x).flatten(1).sum(1)
            - (beta * y).flatten(1).sum(1)
            - plan_mass
        )
        if old_obj is not None and bool(((obj - old_obj).abs() <= 1e-4 + 1e-4 * old_obj.abs()).all()):
            break
        old_obj = obj
    rows = _row_plan(log_x, log_k, nb, ks)  # P 1 = X
    z = fold_columns(rows, tuple(x.shape), ks)
    plan_cost = (rows * cost[None, None, :, None]).flatten(1).sum(1)
    return z, plan_cost


def run(
    objective: Objective,
    x: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    ground: Ground,
    steps: int | None,
    *,
    preset: str = "mnist",
    **options: float,
) -> torch.Tensor:
    """Wong et al.'s PGD with projected Sinkhorn (``pgd.attack``), within the budget ``eps``.

    Options (default: the ``preset``, ``"mnist"`` or ``"cifar"``): ``lam``, ``kernel_size``, ``p``,
    ``eps0``, ``growth``, ``growth_every``, ``step`` (signed-gradient step, pixel units),
    ``sinkhorn_iters``. ``steps`` overrides the preset's iteration count.
    """
    if preset not in PRESETS:
        raise ValueError(
            f"unknown sinkhorn preset {preset!r}; expected one of {', '.join(map(repr, PRESETS))}"
        )
    unknown = set(options) - set(PRESETS[preset])
    if unknown:
        raise ValueError(f"unknown sinkhorn options {sorted(unknown)}; expected {sorted(PRESETS[preset])}")
    cfg = {**PRESETS[preset], **options}
    for name in ("lam", "eps0", "growth", "step"):
        if not (isinstance(cfg[name], int | float) and math.isfinite(cfg[name]) and cfg[name] > 0):
            raise ValueError(f"sinkhorn option {name} must be a finite number > 0, got {cfg[name]!r}")
    for name in ("growth_every", "sinkhorn_iters"):
        if not (isinstance(cfg[name], int) and cfg[name] >= 1):
            raise ValueError(f"sinkhorn option {name} must be a positive integer, got {cfg[name]!r}")
    steps = int(cfg["steps"]) if steps is None else steps
    cost = cost_kernel(int(cfg["kernel_size"]), ground, float(cfg["p"]), dtype=x.dtype, device=x.device)
    mass = x.flatten(1).sum(1).view(-1, 1, 1, 1)
    x_n = x / mass
    radius = torch.full((x.shape[0],), min(float(cfg["eps0"]), eps), dtype=x.dtype, device=x.device)
    adv = x.clone()
    done = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for t in range(steps):
        act = (~done).nonzero().squeeze(1)
        if act.numel() == 0:
            break
        xa = adv[act].requires_grad_(True)
        loss, fooled = objective.loss(xa, labels[act], act)
        (grad,) = torch.autograd.grad(loss.sum(), xa)
        with torch.no_grad():
            move = frozen_update(done, act, fooled)  # the fooled keep their current iterate
            if not bool(move.any()):
                continue
            act, xa, grad = act[move], xa[move], grad[move]
            y = (xa + cfg["step"] * grad.sign()) / mass[act]
            z, _ = projected_sinkhorn(
                x_n[act], y, cost, radius[act], float(cfg["lam"]), max_iter=int(cfg["sinkhorn_iters"])
            )
            adv[act] = z * mass[act]
            if (t + 1) % int(cfg["growth_every"]) == 0:
                radius = torch.where(done, radius, (radius * cfg["growth"]).clamp(max=eps))
    return adv
