"""Exact W1 (L1 ground metric) between two images, by solver and grid size.

``"pot"`` solves the dense transport problem (``ot.emd2`` on the n x n cityblock cost); ``"lp"`` the
Ling-Okada LP on the 4-neighbour grid (Eq. 23 of Levine & Feizi) through cvxpy; ``"network"`` the same
sparse problem with a direct min-cost-flow / LP backend. Histograms are dense (every pixel positive) or
sparse (MNIST-like, about 20% of pixels non-zero). Each solver's per-shape cache (problem build) is warmed
in ``setup``, so the timings are per solve.
"""

from __future__ import annotations

import cvxpy  # noqa: F401  (wbench.transport imports the solvers lazily; preimported for asv's forkserver)
import ot  # noqa: F401

import wbench.transport  # noqa: F401  (preimported for asv's forkserver, see bench/_common.py)
from bench import _common as common


def _warm_w1(size: int, histograms: str, ground: str, solver: str) -> dict:
    """The seeded histogram pair and ``w1``, after two solves outside the timing: they build the
    solver's per-shape cache and pay the lazy import of the backend (POT's first call was 6 s)."""
    from wbench.transport import w1

    x, y = common.histogram_pair(size, histograms, seed=size)
    for _ in range(2):
        w1(x, y, ground=ground, solver=solver)
    return dict(x=x, y=y, _w1=w1)


class W1Suite:
    """``wbench.transport.w1(x, y, ground="l1", solver=...)`` on (size x size) histograms, float64, CPU."""

    params = (
        ["pot", "lp", "network"],
        common.grid([8, 28], [8, 16, 28, 32]),
        ["dense", "sparse"],
    )
    param_names = ("solver", "size", "histograms")
    # One process per case; 5-50 solves timed one by one, sampling stops after 1.5 s.
    rounds = 1
    number = 1
    repeat = (5, 50, 1.5)
    min_run_count = 5
    warmup_time = 0.0  # the warm-up is in setup
    timeout = 60

    def setup(self, solver, size, histograms):
        key = (type(self).__name__, solver, size, histograms)
        vars(self).update(common.per_process(key, lambda: _warm_w1(size, histograms, "l1", solver)))

    def time_w1(self, solver, size, histograms):
        self._w1(self.x, self.y, ground="l1", solver=solver)


class W1GroundSuite:
    """POT with the L1 and L2 ground metrics at MNIST size (the only solver that supports L2)."""

    params = (["l1", "l2"], common.grid([28], [16, 28]))
    param_names = ("ground", "size")
    rounds = 1
    number = 1
    repeat = (5, 50, 1.5)
    min_run_count = 5
    warmup_time = 0.0  # the warm-up is in setup
    timeout = 60

    def setup(self, ground, size):
        key = (type(self).__name__, ground, size)
        vars(self).update(common.per_process(key, lambda: _warm_w1(size, "sparse", ground, "pot")))

    def time_w1_pot(self, ground, size):
        self._w1(self.x, self.y, ground=ground, solver="pot")
