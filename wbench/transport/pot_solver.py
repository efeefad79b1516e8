"""W1 on one image plane with POT's exact network simplex on the dense ground cost.

This is the textbook definition of W1 (Definition 1 of Levine & Feizi): a transport
plan between the pixels that carry mass, with the ground cost between pixel positions
given by the L1 (``cityblock``) or L2 (``euclidean``) distance. POT's default
``sqeuclidean`` metric would give a different quantity and is never used here.
"""

from __future__ import annotations

import warnings

import numpy as np

from wbench.options import Ground
from wbench.transport._inputs import reduce_plane

POT_OPTIMAL = 1
"""POT's result code for an optimal solution (``ot.lp.emd_wrap.check_result``)."""

_METRIC = {Ground.L1: "cityblock", Ground.L2: "euclidean"}


def pot_num_itermax(n_source: int, n_target: int) -> int:
    """Iteration cap for POT's network simplex, ample for grids of 32x32 and more."""
    return max(100_000, 100 * n_source * n_target)


def emd2_checked(a: np.ndarray, b: np.ndarray, cost, **kwargs) -> tuple[float, dict]:
    """``ot.emd2(a, b, cost, log=True)``, raising ``RuntimeError`` unless POT reports optimality.

    ``numItermax`` defaults to :func:`pot_num_itermax`. POT's own warnings about a
    non-optimal result are turned into the error message.
    """
    import ot  # POT loads on first use, not with ``import wbench``

    kwargs.setdefault("numItermax", pot_num_itermax(len(a), len(b)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value, log = ot.emd2(a, b, cost, log=True, **kwargs)
    if int(log["result_code"]) != POT_OPTIMAL:
        raise RuntimeError(
            f"POT's network simplex did not reach optimality (result code {log['result_code']}: "
            f"{log['warning']}); numItermax was {kwargs['numItermax']}"
        )
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return float(value), log


def pot_w1_plane(x: np.ndarray, y: np.ndarray, ground: Ground) -> float:
    """Exact W1 between two (H, W) float64 histograms of equal mass, with POT.

    The mass that stays put is removed first (``wbench.transport._inputs.reduce_plane``:
    exact, since W1 depends on ``x - y`` only), and POT sees the two remaining unit-mass
    histograms on their supports (pixels with zero mass are dropped; this changes nothing
    in the optimum). The optimum is scaled back by the mass moved (W1 is 1-homogeneous).

    Parameters
    ----------
    x, y : numpy.ndarray
        Validated (H, W) float64 histograms (see ``validate_histogram_pair``).
    ground : Ground
        ``Ground.L1`` (``|i-i'| + |j-j'|``, Eq. 73) or ``Ground.L2`` (Euclidean, Eq. 72).

    Raises
    ------
    RuntimeError
        If POT did not reach optimality.
    """
    import ot

    reduced = reduce_plane(x, y)
    if reduced is None:
        return 0.0
    fx, fy = reduced.source.ravel(), reduced.target.ravel()
    sx, sy = np.flatnonzero(fx), np.flatnonzero(fy)
    pos = np.stack(np.unravel_index(np.arange(fx.size), x.shape), axis=1).astype(np.float64)
    cost = ot.dist(pos[sx], pos[sy], metric=_METRIC[ground])
    value, _ = emd2_checked(fx[sx], fy[sy], cost)
    return value * reduced.mass
