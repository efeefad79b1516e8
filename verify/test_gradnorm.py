"""Lin et al. (2019), Eq. 7, Section 4 and Appendix B/C: the Wasserstein gradient norm and L(x).

The reference for every check below is written here from the paper's formulas, independently
of the graph code in ``wbench.gradnorm``: pixel pairs are enumerated by a plain double loop over
all pairs and their distance, and d_i, L(x)_ij and Eq. 7 are evaluated term by term.
"""

from __future__ import annotations

import itertools
import math
import zlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wbench.gradnorm import (
    edge_weight_diagonal,
    incidence_matrix,
    wasserstein_grad_norm_sq,
    wasserstein_laplacian,
)

# float64: agreement of sums in different orders; float32: the brief's 1e-5 relative
RTOL = {torch.float64: 1e-10, torch.float32: 1e-5}
WEIGHTS = {
    "constant": lambda d: 1.0,
    "inverse_distance": lambda d: 1.0 / d,
    "gaussian": lambda d: math.exp(-(d**2) / 8.0),
}


def reference_graph(h: int, w: int, radius: float, neighbourhood: str, weight):
    """Edges {(i, j, omega)} with i < j and the volume form d, by brute force over all pixel pairs."""
    coords = [(a, b) for a in range(h) for b in range(w)]
    edges = []
    for i, j in itertools.combinations(range(h * w), 2):
        (a1, b1), (a2, b2) = coords[i], coords[j]
        if neighbourhood == "euclidean":
            inside = (a1 - a2) ** 2 + (b1 - b2) ** 2 <= radius**2
        else:
            inside = abs(a1 - a2) + abs(b1 - b2) <= radius
        if inside:
            edges.append((i, j, weight(math.hypot(a1 - a2, b1 - b2))))
    deg = np.zeros(h * w)
    for i, j, om in edges:
        deg[i] += om
        deg[j] += om
    return edges, deg / deg.sum()


def reference_laplacian(x: np.ndarray, radius, neighbourhood, weight) -> np.ndarray:
    """Section 4's entry-wise L(x) for a (C, H, W) image, block diagonal over channels."""
    c, h, w = x.shape
    n = h * w
    edges, d = reference_graph(h, w, radius, neighbourhood, weight)
    lap = np.zeros((c * n, c * n))
    for ch in range(c):
        y = x[ch].reshape(-1) / d
        nbrs: dict[int, list[tuple[int, float]]] = {i: [] for i in range(n)}
        for i, j, om in edges:
            nbrs[i].append((j, om))
            nbrs[j].append((i, om))
        for i in range(n):
            lap[ch * n + i, ch * n + i] = 0.5 * sum(om * (y[i] + y[k]) for k, om in nbrs[i])
            for j, om in nbrs[i]:
                lap[ch * n + i, ch * n + j] = -0.5 * om * (y[i] + y[j])
    return lap


def reference_eq7(x: np.ndarray, g: np.ndarray, radius, neighbourhood, weight) -> float:
    """Eq. 7 as a sum over undirected edges, each once, added over channels."""
    c, h, w = x.shape
    edges, d = reference_graph(h, w, radius, neighbourhood, weight)
    total = 0.0
    for ch in range(c):
        y, gg = x[ch].reshape(-1) / d, g[ch].reshape(-1)
        total += sum(om * (gg[i] - gg[j]) ** 2 * (y[i] + y[j]) / 2 for i, j, om in edges)
    return total


def sample_image(gen: torch.Generator, shape, dtype, sparsity: float) -> torch.Tensor:
    x = torch.rand(shape, generator=gen, dtype=torch.float64)
    x[torch.rand(shape, generator=gen, dtype=torch.float64) < sparsity] = 0.0
    return x.to(dtype)


CASES = [
    # (batch, channels, H, W, radius, neighbourhood, weights, sparsity)
    (3, 1, 6, 6, 1, "euclidean", "constant", 0.0),
    (2, 1, 7, 5, 2, "euclidean", "constant", 0.0),
    (2, 3, 5, 8, 3, "euclidean", "constant", 0.3),
    (2, 1, 9, 9, 4, "manhattan", "constant", 0.0),
    (2, 2, 10, 7, 5, "euclidean", "inverse_distance", 0.8),
    (1, 1, 12, 11, 6, "manhattan", "gaussian", 0.0),
    (2, 1, 9, 13, 7, "euclidean", "gaussian", 0.5),
    (2, 3, 10, 10, 8, "euclidean", "constant", 0.0),
    (2, 1, 10, 10, 8, "manhattan", "inverse_distance", 0.95),
    (2, 1, 1, 9, 2, "euclidean", "constant", 0.0),  # a single row
    (1, 1, 2, 2, 8, "euclidean", "constant", 0.0),  # radius larger than the image
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "case", CASES, ids=lambda c: f"{c[0]}x{c[1]}x{c[2]}x{c[3]}-r{c[4]}-{c[5]}-{c[6]}-{c[7]}"
)
def test_three_implementations_agree_with_eq7(claims, dtype, case):
    b, c, h, w, radius, nb, wname, sparsity = case
    gen = torch.Generator().manual_seed(zlib.crc32(repr(case).encode()))  # stable across processes
    x = sample_image(gen, (b, c, h, w), dtype, sparsity)
    g = torch.randn(b, c, h, w, generator=gen, dtype=torch.float64).to(dtype)
    wopt = WEIGHTS[wname] if wname == "gaussian" else wname
    vals = {
        impl: wasserstein_grad_norm_sq(x, g, radius, impl, neighbourhood=nb, weights=wopt)
        for impl in ("conv", "edges", "dense")
    }
    ref = np.array(
        [
            reference_eq7(x[s].double().numpy(), g[s].double().numpy(), radius, nb, WEIGHTS[wname])
            for s in range(b)
        ]
    )
    name = f"{dtype} {case}"
    for impl, v in vals.items():
        assert v.shape == (b,) and v.dtype == dtype
        claims.close(f"Eq. 7: {impl} impl = edge-sum formula", v.double(), ref, rtol=RTOL[dtype], case=name)
    claims.close(
        "Alg. 1: conv = dense L(x) = edges",
        vals["conv"].double(),
        vals["dense"].double(),
        rtol=RTOL[dtype],
    )
    claims.close(
        "Alg. 1: conv = dense L(x) = edges",
        vals["edges"].double(),
        vals["dense"].double(),
        rtol=RTOL[dtype],
    )


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    b=st.integers(1, 3),
    c=st.integers(1, 3),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    radius=st.sampled_from([1, 1.5, 2, 3, 4, 6, 8]),
    nb=st.sampled_from(["euclidean", "manhattan"]),
    wname=st.sampled_from(["constant", "inverse_distance"]),
    sparsity=st.sampled_from([0.0, 0.5, 0.9]),
    seed=st.integers(0, 2**31 - 1),
)
def test_implementations_agree_property(claims, b, c, h, w, radius, nb, wname, sparsity, seed):
    gen = torch.Generator().manual_seed(seed)
    x = sample_image(gen, (b, c, h, w), torch.float64, sparsity)
    g = torch.randn(b, c, h, w, generator=gen, dtype=torch.float64)
    v = [
        wasserstein_grad_norm_sq(x, g, radius, i, neighbourhood=nb, weights=wname) for i in ("conv", "edges")
    ]
    dense = wasserstein_grad_norm_sq(x, g, radius, "dense", neighbourhood=nb, weights=wname)
    quad = torch.stack(
        [
            g[s].reshape(-1)
            @ wasserstein_laplacian(x[s], radius, neighbourhood=nb, weights=wname)
            @ g[s].reshape(-1)
            for s in range(b)
        ]
    )
    case = f"{b}x{c}x{h}x{w} r={radius} {nb} {wname} sparsity={sparsity}"
    for val in v:
        claims.close("Alg. 1: conv = dense L(x) = edges", val, dense, rtol=1e-10, atol=1e-300, case=case)
    claims.close("Eq. 7: norm = grad^T L(x) grad", dense, quad, rtol=1e-10, atol=1e-300, case=case)


@pytest.mark.parametrize(
    "shape,radius,nb,wname",
    [
        ((1, 5, 6), 2, "euclidean", "constant"),
        ((3, 4, 5), 3, "manhattan", "inverse_distance"),
        ((2, 6, 4), 8, "euclidean", "gaussian"),
    ],
)
def test_laplacian_entries_match_definition_1(claims, shape, radius, nb, wname):
    gen = torch.Generator().manual_seed(7)
    x = sample_image(gen, shape, torch.float64, 0.3)
    wopt = WEIGHTS[wname] if wname == "gaussian" else wname
    ref = reference_laplacian(x.numpy(), radius, nb, WEIGHTS[wname])
    lap = wasserstein_laplacian(x, radius, neighbourhood=nb, weights=wopt)
    dmat = incidence_matrix(shape, radius, neighbourhood=nb, weights=wopt)
    lam = edge_weight_diagonal(x, radius, neighbourhood=nb, weights=wopt)
    product = dmat.T @ torch.diag(lam) @ dmat
    sparse = wasserstein_laplacian(x, radius, neighbourhood=nb, weights=wopt, sparse=True).to_dense()
    scale = float(np.abs(ref).max())
    case = f"{shape} r={radius} {nb} {wname}"
    claims.close(
        "Def. 1: D^T Lambda D = Sec. 4 entry-wise L(x)",
        product,
        ref,
        rtol=1e-12,
        atol=1e-12 * scale,
        case=case,
    )
    claims.close(
        "Def. 1: D^T Lambda D = Sec. 4 entry-wise L(x)",
        lap,
        ref,
        rtol=1e-12,
        atol=1e-12 * scale,
        case=case,
    )
    claims.close("Def. 1: sparse L(x) = dense L(x)", sparse, lap, rtol=0, atol=1e-13 * scale, case=case)
    # D's rows: +sqrt(omega) at the larger index i, -sqrt(omega) at j (i > j), as in Definition 1
    rows = dmat.numpy()
    pos, neg = rows.argmax(1), rows.argmin(1)
    claims.true("Def. 1: D rows orient i > j", bool((pos > neg).all()), case=case)
    claims.close(
        "Def. 1: D rows are sqrt(omega) * (e_i - e_j)", rows.sum(1), 0.0, rtol=0, atol=1e-15, case=case
    )


@pytest.mark.parametrize("radius", [1, 2, 4, 8])
@pytest.mark.parametrize("sparsity", [0.0, 0.9])
def test_laplacian_is_symmetric_psd_with_constant_kernel(claims, radius, sparsity):
    gen = torch.Generator().manual_seed(radius)
    x = sample_image(gen, (2, 7, 6), torch.float64, sparsity)
    lap = wasserstein_laplacian(x, radius)
    scale = float(lap.abs().max())
    case = f"r={radius} sparsity={sparsity}"
    claims.close("Def. 1: L(x) symmetric", lap, lap.T, rtol=0, atol=0, case=case)
    eig_min = float(torch.linalg.eigvalsh(lap).min())
    claims.leq(
        "Def. 1: L(x) PSD (min eigenvalue >= -tol)",
        -eig_min,
        0.0,
        atol=1e-12 * scale * lap.shape[0],
        case=case,
    )
    ones = torch.ones(lap.shape[0], dtype=lap.dtype)
    claims.close("Def. 1: L(x) 1 = 0", lap @ ones, 0.0, rtol=0, atol=1e-13 * scale, case=case)
    # one block per channel: the constant on each channel is in the kernel
    n = 7 * 6
    blk = torch.zeros_like(ones)
    blk[:n] = 1.0
    claims.close("Def. 1: L(x) 1 = 0", lap @ blk, 0.0, rtol=0, atol=1e-13 * scale, case=case + " per channel")


def test_volume_form_and_boundary(claims):
    edges, d = reference_graph(6, 6, 2, "euclidean", WEIGHTS["constant"])
    x = torch.ones(1, 1, 6, 6, dtype=torch.float64)
    # with x = d (the volume form itself), x_i/d_i = 1 for every pixel and Lambda = I
    xd = torch.as_tensor(d.reshape(1, 1, 6, 6))
    lam = edge_weight_diagonal(xd[0], 2)
    claims.close(
        "Sec. 4: d_i = sum_j w_ij / sum_ij w_ij", lam, 1.0, rtol=1e-12, case="x = d gives Lambda = I"
    )
    claims.close("Sec. 4: d_i = sum_j w_ij / sum_ij w_ij", d.sum(), 1.0, rtol=1e-14, case="sums to 1")
    corner, centre = d[0], d[2 * 6 + 2]
    claims.true("Sec. 4: boundary pixels have smaller d_i", corner < centre, detail=f"{corner} vs {centre}")
    claims.close(
        "Sec. 4: interior pixel has 12 neighbours at radius 2",
        centre * sum(2 for _ in edges),
        12.0,
        rtol=1e-12,
    )
    g = torch.zeros_like(x)
    g[0, 0, 2, 2] = 1.0  # grad = indicator: the norm is the centre pixel's weighted degree term
    val = wasserstein_grad_norm_sq(x, g, 2, "conv")
    nbr = [j if i == 14 else i for i, j, _ in edges if 14 in (i, j)]
    expected = sum((1 / d[14] + 1 / d[k]) / 2 for k in nbr)
    claims.close("Eq. 7: norm = grad^T L(x) grad", val, expected, rtol=1e-12, case="indicator gradient")
