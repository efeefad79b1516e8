"""The Ling-Okada LP (Eq. 23 of Levine & Feizi) in cvxpy, built once per grid shape.

    minimise    sum(g)
    subject to  g >= 0,
                out-flow(p) - in-flow(p) = x'_p - x_p   for every pixel p,

over the directed 4-neighbour arcs (``wbench.transport._grid``). Its optimum is W1 with
the L1 ground metric (Ling & Okada, 2007). The constraint of the last pixel is implied
by the others (flows conserve mass) and is dropped, so that a mass difference within
the validation tolerance cannot make the LP infeasible.

Each problem is built vectorised (a sparse incidence matrix) and cached per (H, W), with
the right-hand side a cvxpy ``Parameter``; every solve only sets that parameter. It is
solved with HiGHS (simplex: a vertex solution, exact to float64 rounding) with feasibility
tolerances tightened to ``1e-10`` on inputs scaled to a mean mass of 1 per pixel.
"""

from __future__ import annotations

import functools
import threading
from typing import TYPE_CHECKING

import numpy as np

from wbench._validation import ArrayLike
from wbench.transport._grid import grid_arcs
from wbench.transport._inputs import checked_w1, reduce_plane, validate_histogram_pair

if TYPE_CHECKING:
    import cvxpy as cp

HIGHS_OPTIONS = {"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10}
"""Options passed to HiGHS through cvxpy for every LP of this package."""


def solve_lp_checked(problem: cp.Problem, what: str) -> float:
    """Solve ``problem`` with HiGHS; raise ``RuntimeError`` unless cvxpy reports ``optimal``."""
    import cvxpy as cp  # cvxpy loads on first use, not with ``import wbench``

    problem.solve(solver=cp.HIGHS, **HIGHS_OPTIONS)
    if problem.status != cp.OPTIMAL:
        raise RuntimeError(f"{what}: HiGHS returned status {problem.status!r}, not optimal")
    return float(problem.value)


class LingOkadaLP:
    """Eq. 23 on an (H, W) grid as a parametrised cvxpy problem (use :func:`ling_okada_lp`)."""

    def __init__(self, height: int, width: int) -> None:
        import cvxpy as cp  # cvxpy loads on first use, not with ``import wbench``

        self.arcs = grid_arcs(height, width)
        n, m = self.arcs.n_pixels, self.arcs.n_arcs
        self.rhs = cp.Parameter(n - 1, name="mass_difference")
        self.g = cp.Variable(m, nonneg=True, name="g")
        constraint = self.arcs.incidence[: n - 1] @ self.g == self.rhs
        self.problem = cp.Problem(cp.Minimize(cp.sum(self.g)), [constraint])
        self.lock = threading.Lock()

    def solve(self, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        """Optimal value and an optimal ``g`` for histograms ``x`` (source) and ``y`` (= x')."""
        n = self.arcs.n_pixels
        mass = float(x.sum())
        scale = n / mass  # mean mass 1 per pixel: HiGHS's tolerances are absolute
        with self.lock:
            self.rhs.value = ((y - x).ravel()[: n - 1]) * scale
            value = solve_lp_checked(self.problem, "Ling-Okada LP (Eq. 23)")
            g = np.asarray(self.g.value, dtype=np.float64) / scale
        return value / scale, g


@functools.lru_cache(maxsize=16)
def ling_okada_lp(height: int, width: int) -> LingOkadaLP:
    """The cached Eq. 23 problem for an ``height`` x ``width`` grid."""
    return LingOkadaLP(height, width)


def solve_ling_okada_plane(x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Eq. 23 on one (H, W) plane of already validated float64 histograms (no checks).

    Returns the optimum (W1 with L1 ground) and an optimal ``g`` (see :func:`solve_ling_okada`).
    The mass that stays put is removed first (``wbench.transport._inputs.reduce_plane``), so
    the LP sees two unit-mass histograms and HiGHS's absolute tolerances are relative to W1.
    """
    h, w = x.shape
    arcs = grid_arcs(h, w)
    reduced = reduce_plane(x, y) if arcs.n_arcs else None
    if reduced is None:
        return 0.0, np.zeros(arcs.n_arcs)
    value, g = ling_okada_lp(h, w).solve(reduced.source, reduced.target)
    return value * reduced.mass, g * reduced.mass


def solve_ling_okada(x: ArrayLike, y: ArrayLike) -> tuple[float, np.ndarray]:
    """W1 (L1 ground) and optimal arc flows ``g`` of the Ling-Okada LP (Eq. 23), per channel.

    Parameters
    ----------
    x, y : numpy.ndarray or torch.Tensor
        Histograms of shape (H, W) or (C, H, W) with equal mass per channel; ``y`` is x'.

    Returns
    -------
    value : float
        The optimum of Eq. 23 summed over channels, i.e. W1 with L1 ground (Corollary 2).
    g : numpy.ndarray
        An optimal ``g`` of shape ``(n_arcs,)`` or ``(C, n_arcs)`` in the arc order of
        ``wbench.transport._grid.grid_arcs``: ``g[..., k]`` is ``g_(tail[k]),(head[k])``,
        the mass moved from ``head[k]`` to ``tail[k]``.

    Raises
    ------
    ValueError
        On invalid input (see ``wbench.transport.w1``), or if W1 overflows float64.
    RuntimeError
        If HiGHS does not report an optimal solution.
    """
    pair = validate_histogram_pair(x, y)
    results = [solve_ling_okada_plane(xc, yc) for xc, yc in zip(pair.x, pair.y, strict=True)]
    g = np.stack([r[1] for r in results])
    return checked_w1(sum(r[0] for r in results)), (g if pair.channels_given else g[0])
