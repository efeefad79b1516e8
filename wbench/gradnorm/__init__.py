"""Wasserstein gradient norms and the Wasserstein Laplacian L(x) (Lin et al., 2019).

* :func:`wasserstein_grad_norm_sq`: Eq. 7 per sample, ``impl="conv"`` (Algorithm 1),
  ``"edges"`` or ``"dense"``.
* :func:`wasserstein_laplacian`: L(x) = D^T Lambda(x) D (Appendix B, Definition 1), dense or
  sparse; :func:`incidence_matrix` (D) and :func:`edge_weight_diagonal` (diag Lambda(x)).
* :func:`graph_spec`, :func:`half_offsets`, :func:`edge_list`: the pixel graph itself; its options
  are :class:`wbench.options.Neighbourhood` and :class:`wbench.options.EdgeWeight`.
"""

from wbench.gradnorm.graph import GraphSpec, edge_list, graph_spec, half_offsets
from wbench.gradnorm.laplacian import edge_weight_diagonal, incidence_matrix, wasserstein_laplacian
from wbench.gradnorm.norms import wasserstein_grad_norm_sq

__all__ = [
    "GraphSpec",
    "edge_list",
    "edge_weight_diagonal",
    "graph_spec",
    "half_offsets",
    "incidence_matrix",
    "wasserstein_grad_norm_sq",
    "wasserstein_laplacian",
]
