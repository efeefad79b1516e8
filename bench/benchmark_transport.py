"""Exact W1 (L1 ground metric) between two images, by solver and grid size.

``"pot"`` solves the dense transport problem (``ot.emd2`` on the n x n cityblock cost); ``"lp"`` the
Ling-Okada LP on the 4-neighbour grid (Eq. 23 of Levine & Feizi) through cvxpy; ``"network"`` the same
sparse problem with a direct min-cost-flow / LP backend. Histograms are dense (every pixel positive) or
sparse (MNIST-like, about 20% of pixels non-zero). Each solver's per-shape cache (problem build) is warmed
in ``setup``, so the timings are per solve.
"""

from __future__ import annotations

from bench import _common as common


class W1Suite:
    """``wbench.transport.w1(x, y, ground="l1", solver=...)`` on (size x size) histograms, float64, CPU."""

    params = (
        ["pot", "lp", "network"],
        common.grid([8, 28], [8, 16, 28, 32]),
        ["dense", "sparse"],
    )
    param_names = ("solver", "size", "histograms")
    timeout = 300
    number = 1
    repeat = (3, 10, 10.0)
    warmup_time = 0.0

    def setup(self, solver, size, histograms):
        from wbench.transport import w1

        self.x, self.y = common.histogram_pair(size, histograms, seed=size)
        self._w1 = w1
        w1(self.x, self.y, ground="l1", solver=solver)  # warm the per-shape caches

    def time_w1(self, solver, size, histograms):
        self._w1(self.x, self.y, ground="l1", solver=solver)


class W1GroundSuite:
    """POT with the L1 and L2 ground metrics at MNIST size (the only solver that supports L2)."""

    params = (["l1", "l2"], common.grid([28], [16, 28]))
    param_names = ("ground", "size")
    timeout = 300
    number = 1
    repeat = (3, 10, 10.0)
    warmup_time = 0.0

    def setup(self, ground, size):
        from wbench.transport import w1

        self.x, self.y = common.histogram_pair(size, "sparse", seed=size)
        self._w1 = w1

    def time_w1_pot(self, ground, size):
        self._w1(self.x, self.y, ground=ground, solver="pot")
