"""The pixel graph of Lin et al. (2019), Section 4 and Appendix B: offsets, weights, volume form.

Each channel of an (H, W) image is its own graph (no edges between channels). Its nodes
are the pixels; an edge joins two distinct pixels ``p`` and ``q = p + o`` whose offset
``o = (di, dj)`` lies in the neighbourhood of the given radius:

* ``"euclidean"`` (the default): ``di**2 + dj**2 <= radius**2``;
* ``"manhattan"`` (the "diamond" of the WWGAN code): ``|di| + |dj| <= radius``.

Nothing wraps around the border, so boundary pixels have fewer edges. The edge weight
``omega_pq`` is a function of the Euclidean length ``|o|`` of the offset: ``"constant"``
(1, the paper's choice), ``"inverse_distance"`` (``1/|o|``) or any callable returning a
finite positive weight. The normalised volume form is

    d_i = sum_j omega_ij / sum_i sum_j omega_ij,

with both sums over the one channel's graph, so ``d`` sums to 1 over an (H, W) plane.

Every undirected edge is listed once, through the *half set* of offsets: ``di > 0``, or
``di == 0`` and ``dj > 0``. For such an offset the row-major index of ``q`` exceeds that
of ``p``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from wbench.options import EdgeWeight, Neighbourhood, parse_option

WeightSpec = EdgeWeight | str | Callable[[float], float]


@dataclass(frozen=True)
class GraphSpec:
    """A validated graph specification: radius, neighbourhood and weight rule.

    Build it with :func:`graph_spec`, which checks every option.
    """

    radius: float
    neighbourhood: Neighbourhood
    weights: EdgeWeight | Callable[[float], float]


def graph_spec(
    radius: float = 2,
    neighbourhood: Neighbourhood | str = Neighbourhood.EUCLIDEAN,
    weights: WeightSpec = EdgeWeight.CONSTANT,
) -> GraphSpec:
    """Validate the graph options and return a hashable :class:`GraphSpec`.

    Raises
    ------
    ValueError
        If ``radius`` is not a finite number >= 1, or an option is unknown.
    """
    if isinstance(radius, bool) or not isinstance(radius, int | float | np.integer | np.floating):
        raise ValueError(f"radius must be a number >= 1, got {radius!r}")
    if not math.isfinite(radius) or radius < 1:
        raise ValueError(f"radius must be a finite number >= 1, got {radius!r}")
    nb = parse_option(Neighbourhood, neighbourhood, "neighbourhood")
    if callable(weights) and not isinstance(weights, str):
        w: EdgeWeight | Callable[[float], float] = weights
    else:
        w = parse_option(EdgeWeight, weights, "weights")
    r = int(radius) if float(radius).is_integer() else float(radius)
    return GraphSpec(r, nb, w)


def fit_to_image(spec: GraphSpec, height: int, width: int) -> GraphSpec:
    """The same graph with the radius capped at the largest pixel distance in an H x W plane.

    A radius beyond that distance adds no edge, so the result defines the identical graph while
    keeping the offset tables (and the padding of the conv implementation) image-sized.
    """
    # (H-1) + (W-1) bounds both the Manhattan and the Euclidean distance of two pixels; an integer
    # bound avoids rounding at the far corner
    bound = max(height - 1 + width - 1, 1)
    if spec.radius <= bound:
        return spec
    return GraphSpec(bound, spec.neighbourhood, spec.weights)


def _weight_of(spec: GraphSpec, dist: float) -> float:
    if spec.weights is EdgeWeight.CONSTANT:
        return 1.0
    if spec.weights is EdgeWeight.INVERSE_DISTANCE:
        return 1.0 / dist
    value = spec.weights(dist)
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"weights callable must return a number, got {value!r} at distance {dist:.6g}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"weights callable must return a finite weight > 0, got {value!r} at distance {dist:.6g}"
        )
    return value


@lru_cache(maxsize=64)
def half_offsets(spec: GraphSpec) -> tuple[tuple[int, int, float], ...]:
    """The half set O_1..O_d of neighbour relations (Algorithm 1), with their weights.

    Returns
    -------
    tuple of (di, dj, omega)
        One entry per undirected neighbour relation: ``di > 0`` or (``di == 0`` and ``dj > 0``),
        inside the neighbourhood, sorted by (di, dj).
    """
    r = int(math.floor(spec.radius))
    out = []
    for di in range(0, r + 1):
        for dj in range(-r, r + 1):
            if di == 0 and dj <= 0:
                continue
            if spec.neighbourhood is Neighbourhood.EUCLIDEAN:
                inside = di * di + dj * dj <= spec.radius * spec.radius
            else:
                inside = abs(di) + abs(dj) <= spec.radius
            if inside:
                out.append((di, dj, _weight_of(spec, math.hypot(di, dj))))
    return tuple(out)


@dataclass(frozen=True)
class EdgeList:
    """Undirected edges of one (H, W) channel graph, each listed once (numpy, float64 weights).

    ``q[e] > p[e]`` are row-major pixel indices; ``omega[e] > 0``; ``offset[e]`` is the index of
    the edge's relation in :func:`half_offsets`.
    """

    p: np.ndarray
    q: np.ndarray
    omega: np.ndarray
    offset: np.ndarray
    degree: np.ndarray  # (H*W,) sum_j omega_ij
    volume: np.ndarray  # (H*W,) d_i


@lru_cache(maxsize=64)
def edge_list(height: int, width: int, spec: GraphSpec) -> EdgeList:
    """Enumerate the edges of one channel's graph and its volume form d (cached).

    Parameters
    ----------
    height, width : int
        Image plane size.
    spec : GraphSpec
        Graph options from :func:`graph_spec`.
    """
    if height < 1 or width < 1:
        raise ValueError(f"image plane must be at least 1x1, got {height}x{width}")
    ii, jj = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    ps, qs, ws, ks = [], [], [], []
    for k, (di, dj, w) in enumerate(half_offsets(spec)):
        qi, qj = ii + di, jj + dj
        ok = (qi < height) & (qj >= 0) & (qj < width)
        p = (ii * width + jj)[ok]
        ps.append(p)
        qs.append((qi * width + qj)[ok])
        ws.append(np.full(p.shape, w))
        ks.append(np.full(p.shape, k))
    empty_i = np.zeros(0, dtype=np.int64)
    p = np.concatenate(ps).astype(np.int64) if ps else empty_i
    q = np.concatenate(qs).astype(np.int64) if qs else empty_i
    omega = np.concatenate(ws) if ws else np.zeros(0)
    offset = np.concatenate(ks).astype(np.int64) if ks else empty_i
    n = height * width
    degree = np.bincount(p, weights=omega, minlength=n) + np.bincount(q, weights=omega, minlength=n)
    total = degree.sum()
    volume = degree / total if total > 0 else np.zeros(n)
    return EdgeList(p, q, omega, offset, degree, volume)


@lru_cache(maxsize=64)
def _inverse_volume_np(height: int, width: int, spec: GraphSpec) -> np.ndarray:
    el = edge_list(height, width, spec)
    # isolated pixels (only when the graph has no edge at all) never enter a norm; use 0
    with np.errstate(divide="ignore"):
        inv = np.where(el.volume > 0, 1.0 / np.where(el.volume > 0, el.volume, 1.0), 0.0)
    return inv.reshape(height, width)


_TENSOR_CACHE: dict[tuple, torch.Tensor] = {}
_TENSOR_CACHE_MAX = 256


def cached_tensor(key: tuple, build: Callable[[], np.ndarray | torch.Tensor], device, dtype) -> torch.Tensor:
    """Return ``build()`` as a tensor on ``device`` with ``dtype``, cached under ``key``.

    Used for the per-(H, W, graph, device, dtype) constants (inverse volume form, masked
    weights, index arrays) so that the hot path never rebuilds or re-uploads them.
    """
    full = (*key, str(torch.device(device)), dtype)
    t = _TENSOR_CACHE.get(full)
    if t is None:
        if len(_TENSOR_CACHE) >= _TENSOR_CACHE_MAX:
            _TENSOR_CACHE.clear()
        arr = build()
        t = torch.as_tensor(arr).to(device=device)
        if dtype is not None:
            t = t.to(dtype)
        _TENSOR_CACHE[full] = t
    return t


def inverse_volume(height: int, width: int, spec: GraphSpec, device, dtype) -> torch.Tensor:
    """``1/d_i`` as an (H, W) tensor on ``device`` (cached); 0 for isolated pixels."""
    return cached_tensor(
        ("invvol", height, width, spec), lambda: _inverse_volume_np(height, width, spec), device, dtype
    )
