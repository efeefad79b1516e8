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
  separately, and each example stops at its own convergence (the released code iterates the whole
  batch until all have converged), so a projection does not depend on its batch.

The cost of moving mass by the offset ``d = (di, dj)`` is Wong et al.'s ``||d||_2 ** p`` (their
``wasserstein_cost``), raised where needed to the ground distance: ``C(d) = max(||d||_2 ** p,
ground(d))`` (:func:`cost_kernel`). Then ``C(d) >= ground(d)`` on every offset, so a plan inside
this ball has exact W1 (under ``ground``) at most ``eps``. The presets keep Wong et al.'s released
``p = 2``, which needs no raising under either ground (integer offsets have ``di**2 + dj**2 >=
|di| + |dj| >= ||d||_2``): the cost is exactly theirs, ``di**2 + dj**2``, for the L2 ground of
their threat model and for the L1 ground of Levine & Feizi's certificates. The ball is then
conservative (``C >= ground``), and that cost is additively separable, so each window sum of the
iteration is two 1-D passes (2k instead of k**2 terms, :mod:`wbench.attacks.windows`). ``p = 1``
(Levine & Feizi's attack scripts) gives the local-transport W1 ball itself: ``|di| + |dj|`` under
L1 ground (separable too), the Euclidean distance under L2 (the general k x k window).

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

from wbench.attacks.method_options import method_config
from wbench.attacks.objective import Objective, Progress, frozen_update
from wbench.attacks.windows import WindowKernel
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

_LAMBERTW_NEWTON_STEPS = 4  # float64: 2e-9 relative after 3 steps, no change after 4
_PSI_MAX = 1e30  # keeps psi * C finite; psi beyond it means "no transport" to float precision
_LOG_FLOOR = -20.0  # below it W(e^s) = e^s to float32 precision


def lambertw_exp(s: torch.Tensor) -> torch.Tensor:
    """The principal Lambert W function at ``exp(s)``, for any real ``s`` (including ``-inf``).

    Solves ``w + log(w) = s`` by Newton's method in the form ``w <- w (1 + s - log w) / (1 + w)``
    from ``log(1 + exp(s))`` (``s <= 1``) or ``s - log s`` (``s > 1``). The map ``w + log w`` is
    increasing and concave, so after the first step the iterates increase monotonically to the
    root and stay positive; the argument ``exp(s)`` is never formed, so ``s`` of any size is fine
    in float32. For ``s < -20``, ``W(e^s) = e^s`` to float32 precision.
    """
    sc = s.clamp(min=_LOG_FLOOR)
    w = torch.where(sc > 1, sc - torch.log(sc.clamp(min=1.0)), F.softplus(sc.clamp(max=1.0)))
    for _ in range(_LAMBERTW_NEWTON_STEPS):
        w = (1 + sc - torch.log(w)) * (w / (1 + w))  # never forms w * s: no overflow
    return torch.where(s < _LOG_FLOOR, torch.exp(s), w)


def cost_kernel(kernel_size: int, ground: Ground, p: float, *, dtype, device) -> torch.Tensor:
    """``max(||d||_2 ** p, ground(d))`` for the ``kernel_size**2`` offsets ``d`` of a window, row-major.

    ``||d||_2 ** p`` is Wong et al.'s cost (``wasserstein_cost``: ``(di**2 + dj**2) ** (p / 2)``);
    the maximum with the ground distance makes every cost at least the W1 ground distance of its
    offset, so ``<P, C> <= eps`` bounds the exact W1 under ``ground`` (module docstring). It changes
    nothing for L2 ground (integer offsets have ``||d||_2 >= 1``) or for L1 ground with ``p >= 2``
    (``di**2 + dj**2 >= |di| + |dj|`` on integers); for L1 ground with ``p = 1`` it is ``|di| + |dj|``.
    """
    if not (isinstance(kernel_size, int) and kernel_size >= 1 and kernel_size % 2 == 1):
        raise ValueError(f"kernel_size must be an odd positive integer, got {kernel_size!r}")
    if not (isinstance(p, int | float) and math.isfinite(p) and p >= 1):
        raise ValueError(f"p must be a number >= 1 (cost ground(d)**p), got {p!r}")
    r = kernel_size // 2
    d = torch.arange(-r, r + 1, dtype=torch.float64)
    di, dj = torch.meshgrid(d, d, indexing="ij")
    wong = (di**2 + dj**2) ** (p / 2)
    dist = di.abs() + dj.abs() if ground is Ground.L1 else torch.sqrt(di**2 + dj**2)
    return torch.maximum(wong, dist).reshape(-1).to(dtype=dtype, device=device)


def projected_sinkhorn(
    x: torch.Tensor,
    y: torch.Tensor,
    cost: torch.Tensor,
    eps: torch.Tensor,
    lam: float,
    *,
    max_iter: int = 400,
    separable: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Project ``y`` onto the entropic local-transport ball of radius ``eps`` around ``x`` (Wong, Alg. 2).

    Each iteration is Wong et al.'s: the ``alpha`` update, the ``beta`` update (Eq. 12, Lambert W),
    one Newton step on ``psi`` (Eq. 13) and the dual objective (Eq. 9) for the released code's
    stopping test ``|obj - old| <= 1e-4 + 1e-4 |old|``. An example stops at its own convergence
    (the released code iterates the whole batch until every example has converged), so its
    projection does not depend on the batch it is in, and a batch costs the sum of its examples'
    iterations instead of its slowest example's times its size. The window sums
    are shared between the updates: the Newton derivatives ``sum P C`` and ``sum P C**2`` are
    column sums of the plan, taken in the same pass over ``exp(-alpha)`` as the ``beta`` update,
    and the row sums at the new ``psi`` give both the objective's plan mass and the next
    ``alpha``: two window passes per iteration (:class:`~wbench.attacks.windows.WindowKernel`).

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
    max_iter : int
        Iterations at most (the released code's ``maxiters``).
    separable : bool, optional
        Window sums by two 1-D passes (``True``), by the full ``k x k`` window (``False``), or
        the former whenever the cost is additively separable (``None``); the results agree to
        rounding.

    Returns
    -------
    z : torch.Tensor
        The column marginal of the final plan: non-negative, with ``x``'s mass in every channel.
    plan_cost : torch.Tensor
        ``(N,)`` ``<P, C>`` of that plan, an upper bound on the W1 between ``x`` and ``z`` under
        any ground metric whose cost is at most ``cost``.
    """
    kernel = WindowKernel(cost, separable=separable)
    n = x.shape[0]
    log_x = torch.log(x)
    log_lam = math.log(lam)
    tiny = torch.finfo(x.dtype).tiny
    nb_out = torch.full_like(x, math.log(x[0].numel()))  # -beta: the log scaling exp(-beta)
    psi_out = x.new_ones(n)
    # the examples still iterating, and their rows of every per-example quantity
    live = torch.arange(n, device=x.device)
    xs, ys, log_xs, eps_s, nb, psi = x, y, log_x, eps, nb_out, psi_out
    lam_y = lam * y
    row = kernel.lse(nb, psi)  # log sum_d K(d) exp(-beta[x + d])
    old_obj = None
    for _ in range(max_iter):
        na = log_xs - row  # -alpha: rows of the plan sum to x (Eq. 11)
        col, col_c, col_cc = kernel.moments(na, psi)  # column sums of K exp(-alpha), times C, C**2
        nb = lam_y - lambertw_exp(log_lam + lam_y + col)  # beta = W(lam e^{lam y} K^T e^{-alpha}) - lam y
        # Newton step on psi (Eq. 13): sum P C and sum P C**2 with P = e^{-alpha} K e^{-beta}
        dpsi = torch.exp(torch.logsumexp((nb + col_c).flatten(1), dim=1)) - eps_s
        ddpsi = -torch.exp(torch.logsumexp((nb + col_cc).flatten(1), dim=1)).clamp(min=tiny)
        delta = dpsi / ddpsi
        t = torch.ones_like(psi)
        for _ in range(7):  # halve until psi stays >= 0 (at most 2**-7, as the released code)
            t = torch.where(psi - t * delta < 0, t / 2, t)
        psi = (psi - t * delta).clamp(min=0.0, max=_PSI_MAX)
        row = kernel.lse(nb, psi)
        plan_mass = torch.exp(torch.logsumexp((na + row).flatten(1), dim=1))
        obj = (  # the dual objective (Wong et al., Eq. 9, scaled by lambda), beta = -nb
            -0.5 / lam * (nb * nb).flatten(1).sum(1)
            - psi * eps_s
            + (torch.where(xs > 0, na, 0.0) * xs).flatten(1).sum(1)
            + (nb * ys).flatten(1).sum(1)
            - plan_mass
        )
        if old_obj is not None:
            done = (obj - old_obj).abs() <= 1e-4 + 1e-4 * old_obj.abs()
            n_done = int(done.sum())
            if n_done:  # these stop here; the others iterate on without them
                nb_out[live[done]], psi_out[live[done]] = nb[done], psi[done]
                if n_done == live.numel():
                    break
                keep = ~done
                live, xs, ys, log_xs, eps_s, nb, psi, lam_y, row, obj = (
                    t[keep] for t in (live, xs, ys, log_xs, eps_s, nb, psi, lam_y, row, obj)
                )
        old_obj = obj
    else:
        nb_out[live], psi_out[live] = nb, psi
    return kernel.plan(x, nb_out, psi_out)  # rows renormalised to x: P 1 = X


def run(
    objective: Objective,
    x: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    ground: Ground,
    steps: int | None,
    *,
    preset: str = "mnist",
    progress: Progress | None = None,
    **options: float,
) -> torch.Tensor:
    """Wong et al.'s PGD with projected Sinkhorn (``pgd.attack``), within the budget ``eps``.

    Options (default: the ``preset``, ``"mnist"`` or ``"cifar"``): ``lam``, ``kernel_size``, ``p``,
    ``eps0``, ``growth``, ``growth_every``, ``step`` (signed-gradient step, pixel units),
    ``sinkhorn_iters``. ``steps`` overrides the preset's iteration count. ``progress``, if given,
    is called with 1 after every iteration.
    """
    if preset not in PRESETS:
        raise ValueError(
            f"unknown sinkhorn preset {preset!r}; expected one of {', '.join(map(repr, PRESETS))}"
        )
    cfg = method_config(
        "sinkhorn", PRESETS[preset], options, positive=("lam", "eps0", "growth", "step"),
        counts=("growth_every", "sinkhorn_iters"),
    )  # fmt: skip
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
            if bool(move.any()):
                act, xa, grad = act[move], xa[move], grad[move]
                y = (xa + cfg["step"] * grad.sign()) / mass[act]
                z, _ = projected_sinkhorn(
                    x_n[act], y, cost, radius[act], float(cfg["lam"]), max_iter=int(cfg["sinkhorn_iters"])
                )
                adv[act] = z * mass[act]
                if (t + 1) % int(cfg["growth_every"]) == 0:
                    radius = torch.where(done, radius, (radius * cfg["growth"]).clamp(max=eps))
        if progress is not None:
            progress(1)
    return adv
