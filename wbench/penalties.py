"""Gradient-norm penalties for training (Lin et al., 2019, Appendix D).

The regularised objective of Lin et al. is

    l(f(x), y) + eta^2 * (grad_x l(f(x), y))^T G(x)^{-1} grad_x l(f(x), y),

with G^{-1} = I for the Euclidean penalty and G^{-1} = L(x) (Eq. 7) for the Wasserstein one.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from wbench.gradnorm import wasserstein_grad_norm_sq
from wbench.options import GradNormImpl, PenaltyMetric, parse_option


def gradient_penalty_loss(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eta: float,
    metric: PenaltyMetric | str = PenaltyMetric.EUCLIDEAN,
    radius: float = 2,
    **graph_opts,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Cross-entropy plus the squared input-gradient norm penalty of Lin et al., Appendix D.

    .. math::

        \text{total} = \frac1B \sum_b \ell_b + \eta^2 \frac1B \sum_b
                       \nabla_x \ell_b^\top G(x_b)^{-1} \nabla_x \ell_b,
        \qquad \ell_b = \mathrm{CE}(f(x_b), y_b),

    where G^{-1} = I (``"euclidean"``) or G^{-1} = L(x_b), the Wasserstein Laplacian
    (``"wasserstein"``, Eq. 7, computed with the convolutional Algorithm 1).

    Parameters
    ----------
    model : torch.nn.Module
        Maps a (B, C, H, W) batch to (B, K) logits.
    x : Tensor, shape (B, C, H, W)
        Inputs; for the Wasserstein metric they must be non-negative (pixel masses).
    y : Tensor, shape (B,)
        Integer class labels.
    eta : float
        Regularisation strength (>= 0); the penalty is weighted by ``eta**2``.
    metric : {"euclidean", "wasserstein"} or PenaltyMetric
    radius : float, default 2
        Graph radius of the Wasserstein metric (ignored for ``"euclidean"``).
    **graph_opts
        ``neighbourhood`` and ``weights`` for :func:`wbench.gradnorm.wasserstein_grad_norm_sq`;
        only valid with ``metric="wasserstein"``.

    Returns
    -------
    total, data_loss, penalty : Tensor
        Scalars: ``total = data_loss + eta**2 * penalty``; ``data_loss`` is the mean cross
        entropy and ``penalty`` the mean over samples of the squared gradient norm. All three
        are differentiable w.r.t. the model parameters (the input gradient is taken with
        ``create_graph=True``).

    Notes
    -----
    Per-sample input gradients come from one backward pass of the *sum* of the per-sample
    losses, which equals grad_x l_b for every b as long as the model treats samples
    independently (true in eval mode; in train mode BatchNorm couples the samples of a batch,
    as in the authors' training). ``x`` itself is detached: no gradient flows back to it.

    References
    ----------
    A. T. Lin, Y. Dukler, W. Li, G. Montufar, "Wasserstein Diffusion Tikhonov Regularization",
    2019, Eq. 7 and Appendix D.
    """
    kind = parse_option(PenaltyMetric, metric, "metric")
    if isinstance(eta, bool) or not isinstance(eta, numbers.Real) or not math.isfinite(eta) or eta < 0:
        raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")
    if kind is PenaltyMetric.EUCLIDEAN and graph_opts:
        raise ValueError(f"graph options {sorted(graph_opts)} only apply to metric='wasserstein'")
    unknown = set(graph_opts) - {"neighbourhood", "weights"}
    if unknown:
        raise ValueError(f"unknown graph option(s) {sorted(unknown)}; expected 'neighbourhood' or 'weights'")
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f"x must be a (B, C, H, W) tensor, got shape {tuple(getattr(x, 'shape', ()))}")
    if not isinstance(y, torch.Tensor) or y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"y must be a 1-D label tensor with one entry per sample; got shape "
            f"{tuple(getattr(y, 'shape', ()))} for a batch of {x.shape[0]}"
        )

    if kind is PenaltyMetric.WASSERSTEIN and x.numel() > 0:  # L(x) needs masses: one reduction, one sync
        lo, hi = torch.stack(torch.aminmax(x.detach())).tolist()
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError("x contains NaN or inf")
        if lo < 0:
            raise ValueError(f"x has negative mass (min {lo:.3g}); the Wasserstein metric needs x >= 0")

    x_in = x.detach().requires_grad_(True)
    per_sample = F.cross_entropy(model(x_in), y, reduction="none")
    data_loss = per_sample.mean()
    (grad,) = torch.autograd.grad(per_sample.sum(), x_in, create_graph=True)
    if kind is PenaltyMetric.EUCLIDEAN:
        norms = grad.pow(2).flatten(1).sum(1)
    else:
        # x was checked above and grad comes from autograd (a NaN in it shows in the loss)
        norms = wasserstein_grad_norm_sq(
            x.detach(), grad, radius, GradNormImpl.CONV, check=False, **graph_opts
        )
    penalty = norms.mean()
    total = data_loss + float(eta) ** 2 * penalty
    return total, data_loss, penalty
