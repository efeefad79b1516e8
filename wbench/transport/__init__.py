"""Exact W1 between images and the constructive Lemma 1 of Levine & Feizi (AISTATS 2020).

- :func:`w1`: W1 per channel (Corollary 2) with L1 or L2 ground, by three exact solvers:
  POT on the dense cost (``"pot"``), the Ling-Okada LP in cvxpy (``"lp"``), and the
  same LP as a sparse min-cost flow (``"network"``).
- :func:`optimal_flow_plan`: a local flow plan of minimum L1 norm (Lemma 1, via Eq. 24).
- :func:`min_flow_norm`: Eq. 22 solved directly over delta.
- :func:`flow_from_arcs` (Eq. 24) and :func:`arcs_from_flow` (Eq. 29).
"""

from wbench.transport._grid import GridArcs, grid_arcs
from wbench.transport.distance import w1
from wbench.transport.lemma1 import arcs_from_flow, flow_from_arcs, min_flow_norm, optimal_flow_plan
from wbench.transport.ling_okada import solve_ling_okada

__all__ = [
    "GridArcs",
    "arcs_from_flow",
    "flow_from_arcs",
    "grid_arcs",
    "min_flow_norm",
    "optimal_flow_plan",
    "solve_ling_okada",
    "w1",
]
