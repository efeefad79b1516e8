"""The squared Wasserstein gradient norm of Lin et al. (2019), Eq. 7, in three implementations.

For one channel graph (see :mod:`wbench.gradnorm.graph`) and an image x >= 0,

    ||grad f||_W^2 = g^T L(x) g
                   = sum over undirected edges (i, j) of omega_ij (g_i - g_j)^2 (x_i/d_i + x_j/d_j) / 2,

summed over channels. The three implementations compute the same number:

* ``"conv"``: Algorithm 1 (Appendix C). All neighbour relations O_k of the half set are
  evaluated at once as shifted views of the zero-padded gradient and of x/d, stacked into one
  (B, C, K, H, W) tensor; a cached (K, H, W) map of masked weights drops the relations that
  leave the image. Differences are formed exactly (no convolution arithmetic, so no TF32
  rounding on GPUs). A custom autograd function supplies d/dg = 2 L(x) g (and d/dx) from the
  saved per-edge products, so a training step pays about two passes over the stacked tensor
  for the backward; its backward is itself differentiable (double backward is exact).
* ``"edges"``: gathers both end points of an explicit edge list.
* ``"dense"``: assembles the n x n matrix L(x) = D^T Lambda(x) D (Appendix B, Definition 1)
  per sample and channel and evaluates g^T L g; the O(n^2) reference.

The three share the graph tables of :mod:`wbench.gradnorm.graph` (the offsets, the edge list and
the volume form d), so their agreement checks the arithmetic, not the graph; the graph itself is
checked against a brute-force enumeration of pixel pairs in ``verify/test_gradnorm.py``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from wbench.gradnorm.graph import (
    GraphSpec,
    WeightSpec,
    cached_tensor,
    edge_list,
    fit_to_image,
    graph_spec,
    half_offsets,
    inverse_volume,
)
from wbench.options import EdgeWeight, GradNormImpl, Neighbourhood, parse_option


def _check_inputs(x: torch.Tensor, grad: torch.Tensor) -> None:
    """Types, shapes, dtypes and devices of ``x`` and ``grad`` (no device sync)."""
    for name, t in (("x", x), ("grad", grad)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must have a floating dtype, got {t.dtype}")
    if x.ndim != 4:
        raise ValueError(
            f"x must have 4 dimensions (B, C, H, W); got shape {tuple(x.shape)} "
            "(add batch/channel axes with x[None] / x[:, None])"
        )
    if tuple(x.shape) != tuple(grad.shape):
        raise ValueError(f"shape mismatch: x {tuple(x.shape)} vs grad {tuple(grad.shape)}")
    if x.dtype != grad.dtype:
        raise ValueError(f"dtype mismatch: x {x.dtype} vs grad {grad.dtype}")
    if x.device != grad.device:
        raise ValueError(f"device mismatch: x on {x.device} vs grad on {grad.device}")
    if x.shape[-1] < 1 or x.shape[-2] < 1:
        raise ValueError(f"image plane must be at least 1x1, got shape {tuple(x.shape)}")


def _check_values(x: torch.Tensor, grad: torch.Tensor, out: torch.Tensor) -> None:
    """Finite, non-negative ``x``, finite ``grad`` and a finite norm ``out``, in one host sync.

    One reduction per tensor: a NaN or inf anywhere makes a sum non-finite, and only then (or
    on float overflow of a sum) do the exact checks run, to name the problem.
    """
    x_sum, grad_sum, x_min, out_sum = torch.stack([x.sum(), grad.sum(), x.amin(), out.sum()]).tolist()
    if not (math.isfinite(x_sum) and math.isfinite(grad_sum)):
        if not bool(torch.isfinite(x).all()):
            raise ValueError("x contains NaN or inf")
        if not bool(torch.isfinite(grad).all()):
            raise ValueError("grad contains NaN or inf")
    if x_min < 0:
        raise ValueError(f"x has negative mass (min {x_min:.3g}); x must be >= 0")
    if not math.isfinite(out_sum):
        _check_overflow(out)


def _conv_weights(h: int, w: int, spec: GraphSpec, device, dtype) -> torch.Tensor:
    """(K, H, W) map omega_k * [p + O_k inside the image] / 2 over the half set O_1..O_K (cached)."""

    def build() -> np.ndarray:
        offs = half_offsets(spec)
        ii, jj = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        out = np.zeros((len(offs), h, w))
        for k, (di, dj, om) in enumerate(offs):
            ok = (ii + di < h) & (jj + dj >= 0) & (jj + dj < w)
            out[k] = 0.5 * om * ok
        return out

    return cached_tensor(("convw", h, w, spec), build, device, dtype)


def _shifted(t: torch.Tensor, spec: GraphSpec) -> torch.Tensor:
    """Stack t[..., i + di, j + dj] (zero outside the image) over the half set -> (B, C, K, H, W).

    Shifted slices of the zero-padded plane, stacked in one copy; in timings this beat both a
    gather with precomputed indices and conv2d with difference kernels (which, on GPUs, would
    also round through TF32).
    """
    h, w = t.shape[-2:]
    r = int(math.floor(spec.radius))
    tp = F.pad(t, (r, r, 0, r))  # half-set offsets have di in [0, r] and dj in [-r, r]
    return torch.stack([tp[..., di : di + h, dj + r : dj + r + w] for di, dj, _ in half_offsets(spec)], 2)


def _window_index(h: int, w: int, spec: GraphSpec, device) -> torch.Tensor:
    """Flat index of p + O_k in the zero-padded (H + r, W + 2r) plane, for every (k, p) (cached)."""
    r = int(math.floor(spec.radius))

    def build() -> np.ndarray:
        ii, jj = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        rows = [((ii + di) * (w + 2 * r) + (jj + dj + r)).reshape(-1) for di, dj, _ in half_offsets(spec)]
        return np.concatenate(rows).astype(np.int64)

    return cached_tensor(("convidx", h, w, spec), build, device, None)


def _unshift(a: torch.Tensor, spec: GraphSpec) -> torch.Tensor:
    """Adjoint of :func:`_shifted`: out[..., p + O_k] += a[..., k, p], cropped to (B, C, H, W)."""
    b, c, _, h, w = a.shape
    r = int(math.floor(spec.radius))
    buf = a.new_zeros(b, c, (h + r) * (w + 2 * r))
    buf = buf.index_add(2, _window_index(h, w, spec, a.device), a.reshape(b, c, -1))
    return buf.view(b, c, h + r, w + 2 * r)[..., :h, r : r + w]


class _EdgeQuadraticForm(torch.autograd.Function):
    """Per sample sum_{c,k,p} w_k(p) (y_p + y_{p+O_k}) (g_p - g_{p+O_k})^2 with hand-written backward.

    ``w`` is the cached (K, H, W) map of :func:`_conv_weights` (omega_k / 2 on pairs inside the
    image) and ``y = x / d``. The forward allocates two (B, C, K, H, W) tensors (the shifted
    gradient differences and the edge weights times the mass term), multiplies them in place
    and reduces; d/dg = 2 L(x) g is then formed as
    2 (sum_k a_k - unshift(a)) from that saved product a. On CPU the cost of this kernel is
    dominated by fresh large allocations, so it avoids every one it can. When a graph is being
    built through the backward (double backward), everything is recomputed from g and y with
    differentiable operations, so higher derivatives are exact too.
    """

    @staticmethod
    def forward(
        ctx, g: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, spec: GraphSpec
    ) -> torch.Tensor:
        diff = _shifted(g, spec)  # autograd is off inside forward: work in place
        torch.sub(g.unsqueeze(2), diff, out=diff)  # K_{O_k}(grad f) = g_i - g_{O_k(i)}
        weighted = _shifted(y, spec).add_(y.unsqueeze(2)).mul_(weights)  # omega_k M_{O_k}(x)
        weighted.mul_(diff)
        ctx.spec = spec
        ctx.save_for_backward(g, y, weights, weighted)
        return diff.mul_(weighted).sum((1, 2, 3, 4))  # diff is not needed any more

    @staticmethod
    def backward(ctx, gout: torch.Tensor):
        g, y, weights, weighted = ctx.saved_tensors
        spec = ctx.spec
        diff = None
        if torch.is_grad_enabled():  # double backward: rebuild the graph from g and y
            diff = g.unsqueeze(2) - _shifted(g, spec)
            weighted = diff * ((y.unsqueeze(2) + _shifted(y, spec)) * weights)
        grad_g = grad_y = None
        if ctx.needs_input_grad[0]:
            lap_g = weighted.sum(2) - _unshift(weighted, spec)  # L(x) g
            grad_g = lap_g * (2 * gout).view(-1, 1, 1, 1)
        if ctx.needs_input_grad[1]:
            if diff is None:
                diff = g.unsqueeze(2) - _shifted(g, spec)
            sq = diff * diff * weights
            grad_y = (sq.sum(2) + _unshift(sq, spec)) * gout.view(-1, 1, 1, 1)
        return grad_g, grad_y, None, None


def _norm_conv(x: torch.Tensor, g: torch.Tensor, spec: GraphSpec) -> torch.Tensor:
    h, w = x.shape[-2:]
    weights = _conv_weights(h, w, spec, x.device, x.dtype)
    y = x * inverse_volume(h, w, spec, x.device, x.dtype)  # x_i / d_i
    return _EdgeQuadraticForm.apply(g, y, weights, spec)


def _edge_tables(h: int, w: int, spec: GraphSpec, device, dtype):
    el = edge_list(h, w, spec)
    p = cached_tensor(("edge_p", h, w, spec), lambda: el.p, device, None)
    q = cached_tensor(("edge_q", h, w, spec), lambda: el.q, device, None)
    om = cached_tensor(("edge_w", h, w, spec), lambda: el.omega, device, dtype)
    return p, q, om


def _norm_edges(x: torch.Tensor, g: torch.Tensor, spec: GraphSpec) -> torch.Tensor:
    h, w = x.shape[-2:]
    p, q, om = _edge_tables(h, w, spec, x.device, x.dtype)
    y = (x * inverse_volume(h, w, spec, x.device, x.dtype)).flatten(2)
    gf = g.flatten(2)
    diff = gf[..., p] - gf[..., q]
    return (om * diff * diff * (y[..., p] + y[..., q]) / 2).sum((1, 2))


def assemble_laplacian(y: torch.Tensor, h: int, w: int, spec: GraphSpec) -> torch.Tensor:
    """Dense per-channel L(x) = D^T Lambda(x) D from y = x/d of shape (C, H*W) -> (C, n, n).

    Edge e = (i, j) with coefficient c_e = omega_e (y_i + y_j)/2 contributes c_e to L_ii and
    L_jj and -c_e to L_ij and L_ji; this is the product D^T Lambda D written entry by entry
    (Section 4 of Lin et al.).
    """
    n = h * w
    p, q, om = _edge_tables(h, w, spec, y.device, y.dtype)
    coeff = om * (y[:, p] + y[:, q]) / 2  # (C, E)
    idx = torch.cat([p * n + p, q * n + q, p * n + q, q * n + p])
    vals = torch.cat([coeff, coeff, -coeff, -coeff], dim=1)
    lap = torch.zeros(y.shape[0], n * n, dtype=y.dtype, device=y.device)
    lap = lap.index_add(1, idx, vals)
    return lap.view(y.shape[0], n, n)


def _norm_dense(x: torch.Tensor, g: torch.Tensor, spec: GraphSpec) -> torch.Tensor:
    b, c, h, w = x.shape
    y = (x * inverse_volume(h, w, spec, x.device, x.dtype)).reshape(b, c, h * w)
    gf = g.reshape(b, c, h * w)
    out = []
    for s in range(b):  # one n x n matrix per channel at a time keeps memory O(C n^2)
        lap = assemble_laplacian(y[s], h, w, spec)
        out.append(torch.einsum("cn,cnm,cm->", gf[s], lap, gf[s]))
    return torch.stack(out)


_IMPLS = {GradNormImpl.CONV: _norm_conv, GradNormImpl.EDGES: _norm_edges, GradNormImpl.DENSE: _norm_dense}


def wasserstein_grad_norm_sq(
    x: torch.Tensor,
    grad: torch.Tensor,
    radius: float = 2,
    impl: GradNormImpl | str = GradNormImpl.CONV,
    *,
    neighbourhood: Neighbourhood | str = Neighbourhood.EUCLIDEAN,
    weights: WeightSpec = EdgeWeight.CONSTANT,
    check: bool = True,
) -> torch.Tensor:
    r"""Squared Wasserstein norm of the gradient, one value per sample (Lin et al., Eq. 7).

    .. math::

        \|\nabla f(x)\|_W^2 = \nabla f(x)^\top L(x) \nabla f(x)
        = \sum_{(i,j) \in E} \omega_{ij} (g_i - g_j)^2 \frac{x_i/d_i + x_j/d_j}{2},

    with one graph per channel (no edges between channels), every undirected edge counted
    once, and the channel terms added.

    Parameters
    ----------
    x : Tensor, shape (B, C, H, W)
        Non-negative images (the point x where L(x) is evaluated). Only 4-D input is accepted;
        a 3-D tensor would be ambiguous between (B, H, W) and (C, H, W), so add the missing
        axis explicitly (``x[:, None]`` or ``x[None]``).
    grad : Tensor, shape (B, C, H, W)
        Euclidean gradient of f at x, same dtype and device as ``x``.
    radius : float, default 2
        Neighbourhood radius (>= 1); the paper uses 2, 4, 6 or 8.
    impl : {"conv", "dense", "edges"}
        ``"conv"`` (Algorithm 1, fast, differentiable twice; use it for training), ``"edges"``
        (gathered edge list) or ``"dense"`` (the n x n L(x) per sample; a slow reference).
    neighbourhood : {"euclidean", "manhattan"}
        Edges join pixels at Euclidean distance <= radius, or |di| + |dj| <= radius.
    weights : {"constant", "inverse_distance"} or callable
        omega_ij as a function of the Euclidean pixel distance; a callable must return a
        finite number > 0.
    check : bool, default True
        Validate the values of ``x`` and ``grad`` (NaN/inf, negative x) and of the result
        (overflow), which costs a few reductions and two host syncs. Pass False only in a hot
        loop whose caller has validated them (shapes, dtypes, devices and options are always
        checked); nothing is then checked, and NaN/inf inputs or an overflow give a non-finite
        value (inf or NaN, depending on ``impl``), not an error.

    Returns
    -------
    Tensor, shape (B,)
        ``g_b^T L(x_b) g_b`` per sample, in the dtype and on the device of ``x``.

    Raises
    ------
    ValueError
        For non-4-D input, mismatched shapes/dtypes/devices, NaN or inf, negative x,
        radius < 1 or an unknown option; and (with ``check``) when the norm of finite inputs
        overflows the dtype (e.g. float32 gradients near 1e30), naming the samples. All three
        implementations raise this same error.

    Notes
    -----
    The volume form d_i = sum_j omega_ij / sum_i sum_j omega_ij is computed per (H, W) channel
    graph, so boundary pixels (fewer neighbours) have smaller d_i. It and the other graph
    tables are cached per (H, W, graph options, device, dtype).

    References
    ----------
    A. T. Lin, Y. Dukler, W. Li, G. Montufar, "Wasserstein Diffusion Tikhonov Regularization",
    2019: Eq. 7, Appendix B (Definition 1) and Appendix C (Algorithm 1).
    """
    spec = graph_spec(radius, neighbourhood, weights)
    kind = parse_option(GradNormImpl, impl, "impl")
    _check_inputs(x, grad)
    if x.numel() == 0:  # an empty batch (or no channels) has nothing to check
        return (x * grad).sum((1, 2, 3))
    out = _IMPLS[kind](x, grad, fit_to_image(spec, *x.shape[-2:]))
    if check:
        _check_values(x, grad, out)
    return out


def _check_overflow(out: torch.Tensor) -> None:
    """Raise if the norm of finite inputs did not fit the dtype (the same error for every implementation).

    Each implementation overflows differently (a sum of positive terms gives inf, the dense
    ``g^T L g`` mixes signs and gives inf - inf = NaN), so a non-finite result is reported here.
    """
    bad = ~torch.isfinite(out)
    if bool(bad.any()):
        samples = bad.nonzero().flatten().tolist()
        name = str(out.dtype).removeprefix("torch.")
        wider = "" if out.dtype == torch.float64 else "compute in float64 (x.double(), grad.double()) or "
        raise ValueError(
            f"the Wasserstein gradient norm overflows {name} in sample(s) {samples[:10]}: x and grad are "
            f"finite, but g^T L(x) g (or x_i / d_i) exceeds {torch.finfo(out.dtype).max:.3g}; {wider}"
            "rescale grad (the norm is quadratic: ||s g||_W^2 = s^2 ||g||_W^2)"
        )
