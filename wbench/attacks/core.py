"""``wbench.attack``: Wasserstein attacks with exact-W1 accounting.

Whatever a method does internally, the result is judged by the project's exact solvers: the W1
between the normalised clean image and the normalised adversarial image (both divided by the
clean image's mass) under the requested ground metric. An example whose exact W1 exceeds
``eps`` by more than ``1e-6`` relative is never reported as a success.

Methods whose iterates are only approximately inside the ball (``sinkhorn``: an entropic
projection stopped after finitely many iterations) get one final feasibility step: an image with
``W1 > eps`` is moved back towards the clean image, ``x + t (x' - x)`` with ``t < eps / W1``,
which has ``W1 <= t W1(x, x') <= eps`` because W1 is convex in each argument (mix the optimal
plan with the identity). Such examples are flagged in :attr:`AttackResult.shrunk`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from wbench.attacks import flow, frank_wolfe, sinkhorn
from wbench.attacks.objective import Objective, Progress, SmoothedObjective
from wbench.flow import FlowPlan
from wbench.noise import check_mass_images, image_mass
from wbench.options import AttackMethod, Ground, Solver, parse_option

W1_RTOL = 1e-6
"""An adversarial example with exact W1 above ``eps * (1 + W1_RTOL)`` is outside the budget."""

_SHRINK_ROUNDS = 4


@dataclass(frozen=True)
class AttackResult:
    """The outcome of :func:`wbench.attack` for a batch of ``B`` images.

    Attributes
    ----------
    adversarial : torch.Tensor
        Like the input images: non-negative, the same total mass per image and per channel.
    w1 : numpy.ndarray
        float64 ``(B,)``: exact W1 between ``images / m`` and ``adversarial / m`` (``m`` the clean
        image's total mass) under ``ground``, by the project's exact solver.
    success : numpy.ndarray
        bool ``(B,)``: the attacked classifier predicts a class other than the label and
        ``w1 <= eps (1 + 1e-6)``. An abstention of a smoothed classifier is not a success.
    prediction : numpy.ndarray
        int64 ``(B,)``: the attacked classifier's prediction on ``adversarial`` (``-1`` = abstain).
    abstain : numpy.ndarray
        bool ``(B,)``: the smoothed classifier abstained (always ``False`` for a base network).
    shrunk : numpy.ndarray
        bool ``(B,)``: the final feasibility step moved the method's output back into the ball.
    plan : FlowPlan or None
        ``flow`` only: the local flow plans (normalised mass) with ``adversarial = m Delta(x/m, plan)``.
    """

    adversarial: torch.Tensor
    w1: np.ndarray
    success: np.ndarray
    prediction: np.ndarray
    abstain: np.ndarray
    shrunk: np.ndarray
    plan: FlowPlan | None = None


def planned_steps(method: AttackMethod | str, steps: int | None = None, **method_options) -> int:
    """The iterations :func:`attack` runs at most: ``steps``, or the method's default (its preset's)."""
    if steps is not None:
        return steps
    method = parse_option(AttackMethod, method, "attack method")
    if method is AttackMethod.FLOW:
        return int(flow.DEFAULTS["steps"])
    if method is AttackMethod.FRANK_WOLFE:
        return int(frank_wolfe.DEFAULTS["steps"])
    preset = method_options.get("preset", "mnist")
    if preset not in sinkhorn.PRESETS:
        raise ValueError(f"unknown sinkhorn preset {preset!r}; expected one of {sorted(sinkhorn.PRESETS)}")
    return int(sinkhorn.PRESETS[preset]["steps"])


def exact_w1(x: torch.Tensor, y: torch.Tensor, ground: Ground, solver: Solver) -> np.ndarray:
    """Exact W1 per image between ``x / m`` and ``y / m`` (``m``: each clean image's total mass)."""
    from wbench.transport import w1

    mass = x.flatten(1).sum(1).view(-1, 1, 1, 1)
    xn, yn = (x / mass).detach().cpu(), (y / mass).detach().cpu()
    return np.array([w1(a, b, ground=ground, solver=solver) for a, b in zip(xn, yn, strict=True)])


def _check_inputs(model, images, labels, eps, steps, seed) -> None:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise ValueError("images must be a floating-point torch.Tensor of shape (B, C, H, W)")
    check_mass_images(images, "images")
    if images.shape[0] == 0:
        raise ValueError("images must hold at least one image; got an empty batch")
    if min(images.shape[-2:]) < 2:
        raise ValueError(f"images must be at least 2x2 for any mass to move; got shape {tuple(images.shape)}")
    if (
        not isinstance(labels, torch.Tensor)
        or labels.dtype != torch.int64
        or tuple(labels.shape) != images.shape[:1]
    ):
        raise ValueError(f"labels must be an int64 tensor of shape ({images.shape[0]},)")
    if bool((labels < 0).any()):
        raise ValueError("labels must be non-negative class indices")
    if isinstance(eps, bool) or not (isinstance(eps, int | float) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite number > 0 (a W1 radius in normalised mass), got {eps!r}")
    if eps * float(image_mass(images).max()) > torch.finfo(images.dtype).max:
        raise ValueError(f"eps={eps!r} times the image mass overflows {images.dtype}; use a smaller eps")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be a positive integer or None, got {steps!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32):
        raise ValueError(f"seed must be an integer in [0, 2**32) or None, got {seed!r}")


def _objective(model, smoothing, images, seed, options: dict) -> Objective:
    smooth_keys = ("noise_samples", "predict_n", "predict_alpha", "indices")
    picked = {k: options.pop(k) for k in smooth_keys if k in options}
    if smoothing is None:
        if picked:
            raise ValueError(f"options {sorted(picked)} need a smoothing instance")
        return Objective(model)
    from wbench.smoothing import Smooth

    if not isinstance(smoothing, Smooth):
        raise ValueError(
            f"smoothing must be a WassersteinSmoothing or LaplaceSmoothing, got {type(smoothing).__name__}"
        )
    if smoothing.base is not model:
        raise ValueError("smoothing wraps a different base network than model")
    noise_samples = picked.get("noise_samples", 128)
    predict_n = picked.get("predict_n", 10_000)
    predict_alpha = picked.get("predict_alpha", 0.05)
    for name, value in (("noise_samples", noise_samples), ("predict_n", predict_n)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not (isinstance(predict_alpha, float) and 0 < predict_alpha < 1):
        raise ValueError(f"predict_alpha must be in (0, 1), got {predict_alpha!r}")
    indices = picked.get("indices", range(images.shape[0]))
    try:
        indices = [int(i) for i in indices]
    except (TypeError, ValueError) as exc:
        raise ValueError("indices must be a sequence of non-negative integers, one per image") from exc
    if len(indices) != images.shape[0] or min(indices) < 0:
        raise ValueError(f"indices must hold {images.shape[0]} non-negative integers, one per image")
    return SmoothedObjective(
        smoothing, noise_samples=noise_samples, predict_n=predict_n, predict_alpha=predict_alpha,
        seed=0 if seed is None else seed, indices=indices,
    )  # fmt: skip


def _into_ball(x, adv, eps, ground, solver) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Exact W1 of each image, and the convex feasibility step for those outside the ball."""
    w = exact_w1(x, adv, ground, solver)
    shrunk = np.zeros(len(w), dtype=bool)
    factor = 1 - 1e-4
    for _ in range(_SHRINK_ROUNDS):
        over = np.flatnonzero(w > eps * (1 + W1_RTOL))
        if over.size == 0:
            break
        t = torch.as_tensor(eps / w[over] * factor, dtype=x.dtype, device=x.device).view(-1, 1, 1, 1)
        idx = torch.as_tensor(over, device=x.device)
        adv[idx] = x[idx] + t * (adv[idx] - x[idx])
        w[over] = exact_w1(x[idx], adv[idx], ground, solver)
        shrunk[over] = True
        factor *= 1 - 1e-3
    return adv, w, shrunk


def attack(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    method: AttackMethod | str = "flow",
    *,
    ground: Ground | str = "l1",
    smoothing=None,
    steps: int | None = None,
    seed: int | None = None,
    solver: Solver | str | None = None,
    progress: Progress | None = None,
    **method_options,
) -> AttackResult:
    """Attack a classifier inside the W1 ball of radius ``eps`` around each image.

    Parameters
    ----------
    model : torch.nn.Module
        The base network: ``(B, C, H, W)`` images in mass (pixel) units to class scores.
    images : torch.Tensor
        ``(B, C, H, W)``, finite, non-negative, positive total mass per image.
    labels : torch.Tensor
        int64 ``(B,)`` true classes.
    eps : float
        W1 radius in normalised mass under ``ground`` (the units of
        :func:`wbench.certified_radius`). Pixel-mass units are ``eps * m``.
    method : {"flow", "sinkhorn", "frank_wolfe"}
        :mod:`wbench.attacks.flow` (Lemma 1 of Levine & Feizi), :mod:`wbench.attacks.sinkhorn`
        (Wong et al. 2019) or :mod:`wbench.attacks.frank_wolfe` (Wu et al. 2020).
    ground : {"l1", "l2"}
        Ground metric of W1 between pixel positions.
    smoothing : WassersteinSmoothing or LaplaceSmoothing, optional
        Attack this smoothed classifier (whose base network must be ``model``): gradients of the
        noise-averaged loss (options ``noise_samples``, default 128), success by its PREDICT
        (options ``predict_n``, default 10000, and ``predict_alpha``, default 0.05), reading for
        image ``b`` the noise of data-set index ``indices[b]`` (option ``indices``, default ``0..B-1``).
    steps : int, optional
        Iterations (default: the method's preset).
    seed : int, optional
        Seed of the gradient noise of a smoothed attack (``None``: 0); unused otherwise.
    solver : {"network", "lp", "pot"}, optional
        Exact W1 solver (default ``"network"`` for L1 ground, ``"pot"`` for L2).
    progress : callable, optional
        Called with 1 after every attack iteration (at most :func:`planned_steps` calls; fewer
        when every image is fooled early).
    **method_options
        Per method: see each module's ``run``; ``sinkhorn`` takes ``preset="mnist"|"cifar"``.

    Returns
    -------
    AttackResult

    Raises
    ------
    ValueError
        On bad images, labels, eps, option values or unknown options.

    References
    ----------
    .. [1] A. Levine, S. Feizi. AISTATS 2020, Lemma 1, Corollaries 2-3, Appendix C (Figure 7).
    .. [2] E. Wong, F. R. Schmidt, J. Z. Kolter. ICML 2019.
    .. [3] K. Wu, A. H. Wang, Y. Yu. ICML 2020.
    """
    method = parse_option(AttackMethod, method, "attack method")
    ground = parse_option(Ground, ground, "ground")
    solver = parse_option(Solver, solver or ("network" if ground is Ground.L1 else "pot"), "solver")
    if solver is not Solver.POT and ground is not Ground.L1:
        raise ValueError(f"solver {solver.value!r} computes W1 with L1 ground only; use solver='pot' for l2")
    _check_inputs(model, images, labels, eps, steps, seed)
    if progress is not None and not callable(progress):
        raise ValueError(f"progress must be callable or None, got {type(progress).__name__}")
    options = dict(method_options)
    objective = _objective(model, smoothing, images, seed, options)
    eps = float(eps)
    x = images.detach()
    was_training = model.training
    model.eval()
    try:
        plan = None
        if method is AttackMethod.FLOW:
            adv, plan = flow.run(objective, x, labels, eps, ground, steps, progress=progress, **options)
        elif method is AttackMethod.SINKHORN:
            adv = sinkhorn.run(objective, x, labels, eps, ground, steps, progress=progress, **options)
        else:
            adv = frank_wolfe.run(objective, x, labels, eps, ground, steps, progress=progress, **options)
        adv = adv.detach()
        if not bool(torch.isfinite(adv).all()) or bool((adv < 0).any()):
            raise RuntimeError(f"{method.value} attack produced a non-finite or negative image")
        adv, w, shrunk = _into_ball(x, adv, eps, ground, solver)
        prediction = objective.decide(adv)
    finally:
        model.train(was_training)
    label_np = labels.cpu().numpy()
    abstain = prediction == -1
    success = (prediction != label_np) & ~abstain & (w <= eps * (1 + W1_RTOL))
    return AttackResult(adv, w, success, prediction, abstain, shrunk, plan)
