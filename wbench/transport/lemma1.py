"""Constructive Lemma 1 of Levine & Feizi: optimal local flow plans and the maps of Eqs. 24 and 29.

Lemma 1 states ``min_{delta: x' = Delta(x, delta)} ||delta||_1 = W1(x, x')`` with the L1
ground metric (Eq. 22). Its proof maps any feasible ``g`` of the Ling-Okada LP (Eq. 23)
to a feasible delta with ``||delta||_1 <= sum(g)`` (Eq. 24) and any feasible delta to a
feasible ``g`` with ``sum(g) = ||delta||_1`` (Eq. 29). Here:

- :func:`flow_from_arcs` is Eq. 24 and :func:`arcs_from_flow` is Eq. 29;
- :func:`optimal_flow_plan` applies Eq. 24 to an optimal ``g``, which gives a plan with
  ``Delta(x, delta) = x'`` and ``||delta||_1 = W1``;
- :func:`min_flow_norm` solves Eq. 22 itself, as an LP over delta, independently of Eq. 23.
"""

from __future__ import annotations

import functools
import threading

import numpy as np
import scipy.sparse as sp
import torch

from wbench._validation import ArrayLike, check_finite
from wbench.flow import FlowPlan, apply_flow_unchecked
from wbench.options import Solver, parse_option
from wbench.transport._grid import grid_arcs
from wbench.transport._inputs import checked_w1, reduce_plane, validate_histogram_pair
from wbench.transport.ling_okada import solve_ling_okada_plane, solve_lp_checked
from wbench.transport.network import network_w1_plane


def flow_from_arcs(g: ArrayLike, image_shape: tuple[int, ...]) -> FlowPlan:
    """Eq. 24: the local flow plan of Ling-Okada arc flows ``g``.

    ``vertical[i, j] = g_(i,j),(i+1,j) - g_(i+1,j),(i,j)`` and
    ``horizontal[i, j] = g_(i,j),(i,j+1) - g_(i,j+1),(i,j)``.

    Parameters
    ----------
    g : numpy.ndarray or torch.Tensor
        Arc flows of shape ``(..., n_arcs)`` in the arc order of
        ``wbench.transport._grid.grid_arcs`` (leading dims: channels).
    image_shape : tuple of int
        ``(..., H, W)``, the leading dims matching those of ``g``.

    Returns
    -------
    FlowPlan
        float64 torch tensors of shapes ``(..., H-1, W)`` and ``(..., H, W-1)``. If ``g`` is
        feasible for Eq. 23 between x and x', then ``Delta(x, plan) = x'`` (Eqs. 25-27) and
        ``||plan||_1 <= sum(g)`` (Eq. 28).
    """
    if len(image_shape) < 2:
        raise ValueError(f"image_shape must be (..., H, W); got {image_shape}")
    *lead, h, w = image_shape
    arcs = grid_arcs(h, w)
    if isinstance(g, torch.Tensor):
        g = g.detach().to("cpu", torch.float64)
    else:
        g = torch.from_numpy(np.array(g, dtype=np.float64))
    if tuple(g.shape) != (*lead, arcs.n_arcs):
        raise ValueError(
            f"g must have shape {(*lead, arcs.n_arcs)} for images of shape {tuple(image_shape)}; "
            f"got {tuple(g.shape)}"
        )
    check_finite("g", g)
    nv, nh = arcs.n_vertical, arcs.n_horizontal
    down, up = g[..., :nv], g[..., nv : 2 * nv]
    right, left = g[..., 2 * nv : 2 * nv + nh], g[..., 2 * nv + nh :]
    return FlowPlan((down - up).reshape(*lead, h - 1, w), (right - left).reshape(*lead, h, w - 1))


def arcs_from_flow(plan: FlowPlan) -> np.ndarray:
    """Eq. 29: Ling-Okada arc flows of a local flow plan.

    ``g_(i,j),(i+1,j) = max(vertical[i, j], 0)``, ``g_(i+1,j),(i,j) = max(-vertical[i, j], 0)``,
    and likewise for the horizontal arcs (Eq. 30). If ``Delta(x, plan) = x'`` then ``g`` is
    feasible for Eq. 23 (Eq. 31) and ``sum(g) = ||plan||_1`` (Eq. 32).

    Returns
    -------
    numpy.ndarray
        float64 array of shape ``(..., n_arcs)`` in the arc order of ``grid_arcs``.
    """
    if not isinstance(plan, FlowPlan):
        raise ValueError(f"plan must be a FlowPlan, got {type(plan).__name__}")
    v = plan.vertical.detach().to("cpu", torch.float64).numpy()
    hz = plan.horizontal.detach().to("cpu", torch.float64).numpy()
    check_finite("flow plan vertical", v)
    check_finite("flow plan horizontal", hz)
    lead = v.shape[:-2]
    if (
        v.ndim < 2
        or hz.ndim != v.ndim
        or hz.shape[:-2] != lead
        or v.shape[-1] != hz.shape[-1] + 1
        or hz.shape[-2] != v.shape[-2] + 1
    ):
        raise ValueError(f"inconsistent flow plan shapes {v.shape} and {hz.shape}")
    v, hz = v.reshape(*lead, -1), hz.reshape(*lead, -1)
    return np.concatenate([np.maximum(v, 0), np.maximum(-v, 0), np.maximum(hz, 0), np.maximum(-hz, 0)], -1)


def optimal_flow_plan(x: ArrayLike, y: ArrayLike, *, solver: Solver | str = "lp") -> tuple[FlowPlan, float]:
    """A minimum-norm local flow plan from ``x`` to ``y``: constructive Lemma 1.

    Solves the Ling-Okada LP (Eq. 23) for an optimal ``g`` and maps it to delta with
    Eq. 24, so that ``apply_flow(x, plan) == y`` and ``plan.l1_norm() == W1(x, y)``
    (L1 ground). Colour images get one plan per channel (Corollary 2).

    Parameters
    ----------
    x, y : numpy.ndarray or torch.Tensor
        Histograms of shape (H, W) or (C, H, W), non-negative, with equal mass per channel.
    solver : {"lp", "network"}
        ``"lp"``: Eq. 23 in cvxpy (HiGHS); ``"network"``: the same LP as a min-cost flow
        (POT's network simplex on the sparse grid graph), much faster.

    Returns
    -------
    plan : FlowPlan
        float64 torch tensors of shapes ``(..., H-1, W)`` and ``(..., H, W-1)``, on the
        device of ``x`` when it is a tensor (the LP itself is solved on the CPU).
    w1 : float
        W1(x, y) with L1 ground (summed over channels), the LP optimum ``sum(g)``.

    Raises
    ------
    ValueError
        On invalid input (see ``w1``), ``solver="pot"`` (POT's dense plan has no arc flows), or
        a W1 that overflows float64.
    """
    solver = parse_option(Solver, solver, "solver")
    if solver == Solver.POT:
        raise ValueError("optimal_flow_plan needs arc flows: solver must be 'lp' or 'network', not 'pot'")
    pair = validate_histogram_pair(x, y)
    gs, total = [], 0.0
    for xc, yc in zip(pair.x, pair.y, strict=True):
        if solver == Solver.LP:
            value, g = solve_ling_okada_plane(xc, yc)
        else:
            value, g = network_w1_plane(xc, yc, return_arcs=True)
        gs.append(g)
        total += value
    g_all = np.stack(gs)
    shape = pair.x.shape if pair.channels_given else pair.x.shape[1:]
    plan = flow_from_arcs(g_all if pair.channels_given else g_all[0], shape)
    return plan.to(_device_of(x)), checked_w1(total)


def _device_of(x: ArrayLike) -> torch.device:
    return x.device if isinstance(x, torch.Tensor) else torch.device("cpu")


@functools.lru_cache(maxsize=64)
def delta_operator(height: int, width: int) -> sp.csc_matrix:
    """The matrix D of ``Delta(x, delta) - x = D @ [vec(vertical), vec(horizontal)]`` (Definition 3.1).

    Built column by column from :func:`wbench.flow.apply_flow_unchecked` on unit plans, so
    that the Eq. 22 LP uses Definition 3.1 as implemented, not the arcs of Eq. 23.
    """
    nv, nh = (height - 1) * width, height * (width - 1)
    eye = torch.eye(nv + nh, dtype=torch.float64)
    v = eye[:, :nv].reshape(nv + nh, height - 1, width)
    hz = eye[:, nv:].reshape(nv + nh, height, width - 1)
    cols = apply_flow_unchecked(torch.zeros(nv + nh, height, width, dtype=torch.float64), v, hz)
    return sp.csc_matrix(cols.reshape(nv + nh, height * width).T.numpy())


class _MinFlowNormLP:
    """Eq. 22 on an (H, W) grid: minimise ||delta||_1 subject to Delta(x, delta) = x'."""

    def __init__(self, height: int, width: int) -> None:
        import cvxpy as cp  # cvxpy loads on first use, not with ``import wbench``

        d = delta_operator(height, width)
        n, k = d.shape
        self.shape = (height, width)
        self.rhs = cp.Parameter(n - 1, name="mass_difference")
        self.delta = cp.Variable(k, name="delta")
        self.problem = cp.Problem(cp.Minimize(cp.norm1(self.delta)), [d[: n - 1] @ self.delta == self.rhs])
        self.lock = threading.Lock()

    def solve(self, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        n = x.size
        scale = n / float(x.sum())
        with self.lock:
            self.rhs.value = (y - x).ravel()[: n - 1] * scale
            value = solve_lp_checked(self.problem, "min ||delta||_1 LP (Eq. 22)")
            delta = np.asarray(self.delta.value, dtype=np.float64) / scale
        return value / scale, delta


@functools.lru_cache(maxsize=16)
def _min_flow_norm_lp(height: int, width: int) -> _MinFlowNormLP:
    return _MinFlowNormLP(height, width)


def min_flow_norm(x: ArrayLike, y: ArrayLike) -> tuple[FlowPlan, float]:
    """Solve Eq. 22 directly: ``min ||delta||_1`` subject to ``Delta(x, delta) = y``.

    An LP in cvxpy over the flow variables themselves (vertical and horizontal), solved
    with HiGHS, independent of the Ling-Okada arcs. Per channel for (C, H, W) input.

    Returns
    -------
    plan : FlowPlan
        A minimiser, float64 torch tensors (on the device of ``x`` when it is a tensor).
    norm : float
        The minimum of ``||delta||_1`` (summed over channels); W1 with L1 ground by Lemma 1.
    """
    pair = validate_histogram_pair(x, y)
    c, h, w = pair.x.shape
    nv, nh = (h - 1) * w, h * (w - 1)
    deltas, total = np.zeros((c, nv + nh)), 0.0
    for k, (xc, yc) in enumerate(zip(pair.x, pair.y, strict=True)):
        reduced = reduce_plane(xc, yc) if nv + nh else None
        if reduced is None:
            continue
        value, delta = _min_flow_norm_lp(h, w).solve(reduced.source, reduced.target)
        deltas[k] = delta * reduced.mass
        total += value * reduced.mass
    vert = torch.from_numpy(deltas[:, :nv].reshape(c, h - 1, w))
    horiz = torch.from_numpy(deltas[:, nv:].reshape(c, h, w - 1))
    plan = FlowPlan(vert, horiz) if pair.channels_given else FlowPlan(vert[0], horiz[0])
    return plan.to(_device_of(x)), checked_w1(total)
