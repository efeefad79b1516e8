"""Fast exact W1 (L1 ground) as a min-cost flow on the sparse 4-neighbour grid graph.

With the L1 ground metric, W1 is the min-cost flow of the Ling-Okada LP (Eq. 23 of
Levine & Feizi): unit cost per move between 4-neighbours. That transshipment problem
is solved exactly by POT's network simplex on a sparse bipartite graph, through the
classic transshipment-to-transportation reduction:

- every pixel ``p`` is a source with supply ``x_p + B`` and a sink with demand ``x'_p + B``;
- a source ``p`` is joined to the sink ``p`` at cost 0 and to the sinks of its
  4-neighbours at cost 1 (5 edges per pixel at most, instead of a dense n x n cost);
- the buffer ``B`` is the total mass (1 after normalisation). An optimal cycle-free flow
  moves at most the total mass through any pixel, so the zero-cost edge ``p -> p``
  carries ``B`` minus the pixel's throughput >= 0, and the transportation optimum equals
  the transshipment optimum.

The flow on the edge ``p -> q`` (``q != p``) is the mass moved from ``p`` to ``q``.
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.sparse as sp

from wbench.transport._grid import grid_arcs
from wbench.transport._inputs import reduce_plane
from wbench.transport.pot_solver import emd2_checked


@functools.lru_cache(maxsize=64)
def transshipment_cost(height: int, width: int) -> sp.coo_array:
    """Sparse (n, n) cost of the reduced transportation problem: 0 on the diagonal, 1 between 4-neighbours.

    The zeros on the diagonal are stored explicitly: they are edges, not missing entries.
    Entries ``n + k`` of the COO data are the physical moves ``head[k] -> tail[k]`` of the
    Ling-Okada arc ``k`` (see ``wbench.transport._grid``).
    """
    arcs = grid_arcs(height, width)
    n = arcs.n_pixels
    diag = np.arange(n, dtype=np.int64)
    rows = np.concatenate([diag, arcs.head])
    cols = np.concatenate([diag, arcs.tail])
    data = np.concatenate([np.zeros(n), np.ones(arcs.n_arcs)])
    return sp.coo_array((data, (rows, cols)), shape=(n, n))


def _require_sparse_emd() -> None:
    import ot  # POT loads on first use, not with ``import wbench``
    from ot.lp import emd_wrap

    if not hasattr(emd_wrap, "emd_c_sparse"):
        raise RuntimeError(
            "solver 'network' needs POT >= 0.9.7 (sparse cost matrices in ot.emd2); "
            f"found POT {ot.__version__}"
        )


def crop_to_support(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Restrict two (H, W) histograms to the bounding box of the union of their supports.

    Exact for W1 with L1 ground: an optimal flow can be decomposed into moves along
    shortest 4-neighbour paths from a pixel of x to a pixel of x', and every shortest
    path between two pixels stays in their bounding box. A sparse image (an MNIST digit
    fills about 20x20 of 28x28) then gives a smaller graph.
    """
    occupied = (x > 0) | (y > 0)
    rows, cols = np.flatnonzero(occupied.any(axis=1)), np.flatnonzero(occupied.any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    return x[box], y[box]


def network_w1_plane(x: np.ndarray, y: np.ndarray, *, return_arcs: bool = False):
    """Exact W1 with L1 ground between two (H, W) float64 histograms of equal mass.

    Parameters
    ----------
    x, y : numpy.ndarray
        Validated (H, W) float64 histograms (see ``validate_histogram_pair``). The mass that
        stays put is removed first (``wbench.transport._inputs.reduce_plane``), so the buffer
        of 1 never swamps small masses: the reduced histograms have unit mass each.
    return_arcs : bool
        Also return an optimal ``g`` of the Ling-Okada LP (Eq. 23), in the arc order
        of ``wbench.transport._grid.grid_arcs``. Without it, the grid is first cropped
        to the bounding box of the supports (:func:`crop_to_support`), which is exact.

    Returns
    -------
    float, or (float, numpy.ndarray)
        W1, and the arc flows ``g`` when ``return_arcs``.

    Raises
    ------
    RuntimeError
        If POT did not reach optimality.
    """
    _require_sparse_emd()
    reduced = reduce_plane(x, y)
    if reduced is None:
        return (0.0, np.zeros(grid_arcs(*x.shape).n_arcs)) if return_arcs else 0.0
    x, y = reduced.source, reduced.target
    if not return_arcs:
        x, y = crop_to_support(x, y)
    h, w = x.shape
    arcs = grid_arcs(h, w)
    if arcs.n_arcs == 0:
        return (0.0, np.zeros(0)) if return_arcs else 0.0
    cost = transshipment_cost(h, w)
    supply = x.ravel() + 1.0
    demand = y.ravel() + 1.0
    value, log = emd2_checked(supply, demand, cost, return_matrix=return_arcs)
    if not return_arcs:
        return value * reduced.mass
    plan = sp.csr_array(log["G"])
    g = np.asarray(plan[arcs.head, arcs.tail]).ravel() * reduced.mass
    return value * reduced.mass, g
