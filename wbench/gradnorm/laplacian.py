"""The Wasserstein Laplacian L(x) = D^T Lambda(x) D of Lin et al. (2019), Appendix B, Definition 1.

* D (|E| x n) is the discrete gradient: the row of edge (i, j), i > j, holds sqrt(omega_ij) at
  column i and -sqrt(omega_ij) at column j.
* Lambda(x) (|E| x |E|) is diagonal with entries (x_i/d_i + x_j/d_j)/2.

For a (C, H, W) image the graph is one (H, W) graph per channel, so D and L(x) are block
diagonal with C blocks; pixel (c, i, j) has index c*H*W + i*W + j (row-major flattening).
L(x) is symmetric positive semi-definite, L(x) 1 = 0, and the covariance of the Wasserstein
noise of Theorem 1 is eta^2 L(x) = eta^2 (Lambda^{1/2} D)^T (Lambda^{1/2} D).
"""

from __future__ import annotations

import torch

from wbench.gradnorm.graph import WeightSpec, edge_list, fit_to_image, graph_spec, inverse_volume
from wbench.gradnorm.norms import assemble_laplacian
from wbench.options import EdgeWeight, Neighbourhood


def _as_chw(x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"x must have a floating dtype, got {x.dtype}")
    if x.ndim not in (2, 3):
        raise ValueError(f"x must have 2 or 3 dimensions ((H, W) or (C, H, W)); got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or inf")
    if bool((x < 0).any()):
        raise ValueError(f"x has negative mass (min {float(x.min()):.3g}); x must be >= 0")
    return x if x.ndim == 3 else x.unsqueeze(0)


def incidence_matrix(
    image_shape: tuple[int, ...],
    radius: float = 2,
    *,
    neighbourhood: Neighbourhood | str = Neighbourhood.EUCLIDEAN,
    weights: WeightSpec = EdgeWeight.CONSTANT,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    sparse: bool = False,
) -> torch.Tensor:
    """The discrete gradient operator D of Definition 1, shape (C*|E|, C*H*W).

    Parameters
    ----------
    image_shape : (H, W) or (C, H, W)
    radius, neighbourhood, weights
        Graph options, as in :func:`wasserstein_grad_norm_sq`.
    sparse : bool
        Return a coalesced torch sparse COO tensor instead of a dense one.

    Notes
    -----
    Rows are ordered channel by channel, and within a channel as in
    :func:`wbench.gradnorm.graph.edge_list`; :func:`edge_weight_diagonal` uses the same order.
    """
    if len(image_shape) not in (2, 3):
        raise ValueError(f"image_shape must be (H, W) or (C, H, W), got {tuple(image_shape)}")
    c, h, w = (1, *image_shape) if len(image_shape) == 2 else tuple(image_shape)
    if min(c, h, w) < 1:
        raise ValueError(f"image_shape must be positive, got {tuple(image_shape)}")
    el = edge_list(h, w, fit_to_image(graph_spec(radius, neighbourhood, weights), h, w))
    n, m = h * w, el.p.size
    rows = torch.arange(c * m).repeat(2)
    base = (torch.arange(c) * n).repeat_interleave(m)
    cols = torch.cat([base + torch.as_tensor(el.q).repeat(c), base + torch.as_tensor(el.p).repeat(c)])
    root = torch.as_tensor(el.omega, dtype=torch.float64).sqrt().repeat(c)
    vals = torch.cat([root, -root]).to(dtype)
    mat = torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, (c * m, c * n), check_invariants=True)
    mat = mat.coalesce().to(device)
    return mat if sparse else mat.to_dense()


def edge_weight_diagonal(
    x: torch.Tensor,
    radius: float = 2,
    *,
    neighbourhood: Neighbourhood | str = Neighbourhood.EUCLIDEAN,
    weights: WeightSpec = EdgeWeight.CONSTANT,
) -> torch.Tensor:
    """The diagonal of Lambda(x) of Definition 1: (x_i/d_i + x_j/d_j)/2 per edge, shape (C*|E|,)."""
    xc = _as_chw(x)
    c, h, w = xc.shape
    spec = fit_to_image(graph_spec(radius, neighbourhood, weights), h, w)
    el = edge_list(h, w, spec)
    y = (xc * inverse_volume(h, w, spec, xc.device, xc.dtype)).reshape(c, h * w)
    p = torch.as_tensor(el.p, device=xc.device)
    q = torch.as_tensor(el.q, device=xc.device)
    return ((y[:, q] + y[:, p]) / 2).reshape(-1)


def wasserstein_laplacian(
    x: torch.Tensor,
    radius: float = 2,
    *,
    neighbourhood: Neighbourhood | str = Neighbourhood.EUCLIDEAN,
    weights: WeightSpec = EdgeWeight.CONSTANT,
    sparse: bool = False,
) -> torch.Tensor:
    r"""The Wasserstein Laplacian L(x) = D^T Lambda(x) D (Lin et al., Appendix B, Definition 1).

    .. math::

        L(x)_{ij} = \begin{cases}
            \tfrac12 \sum_{k \in N(i)} \omega_{ik} (x_i/d_i + x_k/d_k) & i = j \\
            -\tfrac12 \omega_{ij} (x_i/d_i + x_j/d_j) & j \in N(i) \\
            0 & \text{otherwise}
        \end{cases}

    Parameters
    ----------
    x : Tensor, shape (H, W) or (C, H, W)
        One non-negative image.
    radius, neighbourhood, weights
        Graph options, as in :func:`wasserstein_grad_norm_sq`.
    sparse : bool, default False
        Return a coalesced torch sparse COO matrix (``.to_dense()``, or convert with
        ``scipy.sparse.coo_array``) instead of a dense tensor.

    Returns
    -------
    Tensor, shape (n, n), n = C*H*W
        Block diagonal (one block per channel), in x's dtype and on x's device;
        ``g @ L @ g`` equals :func:`wasserstein_grad_norm_sq` of ``x[None]`` and ``g``.
    """
    xc = _as_chw(x)
    c, h, w = xc.shape
    spec = fit_to_image(graph_spec(radius, neighbourhood, weights), h, w)
    n = h * w
    y = (xc * inverse_volume(h, w, spec, xc.device, xc.dtype)).reshape(c, n)
    if not sparse:
        blocks = assemble_laplacian(y, h, w, spec)
        return torch.block_diag(*blocks) if c > 1 else blocks[0]
    el = edge_list(h, w, spec)
    p = torch.as_tensor(el.p, device=xc.device)
    q = torch.as_tensor(el.q, device=xc.device)
    om = torch.as_tensor(el.omega, device=xc.device, dtype=xc.dtype)
    coeff = om * (y[:, p] + y[:, q]) / 2  # (C, E)
    shift = (torch.arange(c, device=xc.device) * n)[:, None]
    pp, qq = (p + shift).reshape(-1), (q + shift).reshape(-1)
    rows = torch.cat([pp, qq, pp, qq])
    cols = torch.cat([pp, qq, qq, pp])
    cf = coeff.reshape(-1)
    vals = torch.cat([cf, cf, -cf, -cf])
    return torch.sparse_coo_tensor(
        torch.stack([rows, cols]), vals, (c * n, c * n), check_invariants=True
    ).coalesce()
