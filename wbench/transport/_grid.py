"""The directed 4-neighbour arcs of an (H, W) pixel grid, indexed as in Eqs. 23-29 of Levine & Feizi.

Arc ``k`` stands for the variable ``g_(a),(b)`` of the Ling-Okada LP (Eq. 23), with
``a = tail[k]`` and ``b = head[k]`` (flat pixel indices ``i * W + j``). The arcs come in
four blocks, so that Eqs. 24 and 29 are plain slices:

=============  ============================  =================
block          arc                           length
=============  ============================  =================
``down``       (i, j) -> (i+1, j)            (H-1) * W
``up``         (i+1, j) -> (i, j)            (H-1) * W
``right``      (i, j) -> (i, j+1)            H * (W-1)
``left``       (i, j+1) -> (i, j)            H * (W-1)
=============  ============================  =================

The flow constraint of Eq. 23 reads ``out-flow(a) - in-flow(a) = x'_a - x_a``: the
incidence matrix has +1 at the tail and -1 at the head of each arc, and ``A @ g = x' - x``.
With that sign, ``g_(a),(b)`` is the mass that moves from ``b`` to ``a``; Eq. 24 and the
sign convention of Definition 3.1 (a positive ``vertical[i, j]`` moves mass from
(i+1, j) to (i, j)) then give ``Delta(x, delta) = x'`` exactly.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


@dataclass(frozen=True)
class GridArcs:
    """Directed 4-neighbour arcs of an (H, W) grid (see the module docstring for the layout)."""

    height: int
    width: int
    tail: np.ndarray
    head: np.ndarray

    @property
    def n_vertical(self) -> int:
        """(H-1) * W: the size of the ``down`` and ``up`` blocks (and of delta's vertical part)."""
        return (self.height - 1) * self.width

    @property
    def n_horizontal(self) -> int:
        """H * (W-1): the size of the ``right`` and ``left`` blocks (and of delta's horizontal part)."""
        return self.height * (self.width - 1)

    @property
    def n_arcs(self) -> int:
        return 2 * (self.n_vertical + self.n_horizontal)

    @property
    def n_pixels(self) -> int:
        return self.height * self.width

    @functools.cached_property
    def incidence(self) -> sp.csc_matrix:
        """(H*W, n_arcs) node-arc incidence: +1 at the tail, -1 at the head (Eq. 23's constraint)."""
        m = self.n_arcs
        cols = np.arange(m)
        return sp.csc_matrix(
            (np.r_[np.ones(m), -np.ones(m)], (np.r_[self.tail, self.head], np.r_[cols, cols])),
            shape=(self.n_pixels, m),
        )


@functools.lru_cache(maxsize=64)
def grid_arcs(height: int, width: int) -> GridArcs:
    """The (cached) arcs of an ``height`` x ``width`` grid."""
    if height < 1 or width < 1:
        raise ValueError(f"grid must be at least 1x1, got {height}x{width}")
    idx = np.arange(height * width, dtype=np.int64).reshape(height, width)
    above, below = idx[:-1, :].ravel(), idx[1:, :].ravel()
    left, right = idx[:, :-1].ravel(), idx[:, 1:].ravel()
    tail = np.concatenate([above, below, left, right])
    head = np.concatenate([below, above, right, left])
    tail.setflags(write=False)
    head.setflags(write=False)
    return GridArcs(height, width, tail, head)
