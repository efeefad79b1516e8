"""Unit tests for wbench.gradnorm: graph construction, validation, dtypes, autograd."""

from __future__ import annotations

import math

import pytest
import torch

from wbench.gradnorm import (
    edge_list,
    edge_weight_diagonal,
    graph_spec,
    half_offsets,
    incidence_matrix,
    wasserstein_grad_norm_sq,
    wasserstein_laplacian,
)

IMPLS = ("conv", "edges", "dense")


def _gauss_circle(r: int) -> int:
    return sum(1 for a in range(-r, r + 1) for b in range(-r, r + 1) if a * a + b * b <= r * r)


@pytest.mark.parametrize("radius", [1, 2, 3, 4, 6, 8])
def test_neighbour_counts(radius):
    euclid = half_offsets(graph_spec(radius, "euclidean"))
    manhattan = half_offsets(graph_spec(radius, "manhattan"))
    assert 2 * len(euclid) == _gauss_circle(radius) - 1
    assert 2 * len(manhattan) == 2 * radius * (radius + 1)
    for di, dj, w in euclid:
        assert (di > 0 or (di == 0 and dj > 0)) and di * di + dj * dj <= radius * radius and w == 1.0


def test_radius_two_neighbourhoods_coincide_and_differ_at_three():
    assert {o[:2] for o in half_offsets(graph_spec(2, "euclidean"))} == {
        o[:2] for o in half_offsets(graph_spec(2, "manhattan"))
    }
    e3 = {o[:2] for o in half_offsets(graph_spec(3, "euclidean"))}
    m3 = {o[:2] for o in half_offsets(graph_spec(3, "manhattan"))}
    assert (2, 2) in e3 and (2, 2) not in m3 and m3 < e3


def test_edge_list_counts_each_undirected_edge_once():
    el = edge_list(5, 6, graph_spec(2))
    pairs = set(zip(el.p.tolist(), el.q.tolist(), strict=True))
    assert len(pairs) == el.p.size and all(q > p for p, q in pairs)
    assert not any((q, p) in pairs for p, q in pairs)
    assert el.volume.sum() == pytest.approx(1.0, rel=1e-14)
    assert el.degree.min() == el.degree[0] and el.degree.max() == 12  # corner smallest, interior 12


def test_weights_options():
    inv = half_offsets(graph_spec(2, weights="inverse_distance"))
    assert all(w == pytest.approx(1 / math.hypot(di, dj), rel=1e-15) for di, dj, w in inv)
    cal = half_offsets(graph_spec(2, weights=lambda d: d**2))
    assert all(w == pytest.approx(di * di + dj * dj, rel=1e-15) for di, dj, w in cal)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"radius": 0.5}, "radius"),
        ({"radius": float("nan")}, "radius"),
        ({"radius": "2"}, "radius"),
        ({"impl": "fft"}, "impl"),
        ({"neighbourhood": "chebyshev"}, "neighbourhood"),
        ({"weights": "gaussian"}, "weights"),
        ({"weights": lambda d: -1.0}, "weight"),
        ({"weights": lambda d: float("inf")}, "weight"),
    ],
)
def test_bad_options_raise(kwargs, match):
    x = torch.rand(2, 1, 4, 4)
    with pytest.raises(ValueError, match=match):
        wasserstein_grad_norm_sq(x, torch.randn_like(x), **kwargs)


def test_bad_inputs_raise():
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    g = torch.randn_like(x)
    with pytest.raises(ValueError, match="shape mismatch"):
        wasserstein_grad_norm_sq(x, g[:, :, :3])
    with pytest.raises(ValueError, match="4 dimensions"):
        wasserstein_grad_norm_sq(x[0], g[0])
    with pytest.raises(ValueError, match="dtype mismatch"):
        wasserstein_grad_norm_sq(x, g.float())
    with pytest.raises(ValueError, match="floating"):
        wasserstein_grad_norm_sq(x.long(), g.long())
    for bad in (float("nan"), float("inf")):
        xb = x.clone()
        xb[1, 0, 2, 3] = bad
        with pytest.raises(ValueError, match="x contains NaN or inf"):
            wasserstein_grad_norm_sq(xb, g)
        gb = g.clone()
        gb[0, 0, 0, 0] = bad
        with pytest.raises(ValueError, match="grad contains NaN or inf"):
            wasserstein_grad_norm_sq(x, gb)
    xn = x.clone()
    xn[0, 0, 1, 1] = -1e-3
    with pytest.raises(ValueError, match="negative mass"):
        wasserstein_grad_norm_sq(xn, g)
    with pytest.raises(ValueError, match="negative mass"):
        wasserstein_laplacian(xn[0])
    with pytest.raises(ValueError, match="2 or 3 dimensions"):
        wasserstein_laplacian(x)
    with pytest.raises(ValueError, match="image_shape"):
        incidence_matrix((4,))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_output_shape_dtype_device(impl, dtype):
    x = torch.rand(3, 2, 5, 4).to(dtype)
    out = wasserstein_grad_norm_sq(x, torch.randn(3, 2, 5, 4).to(dtype), 2, impl)
    assert out.shape == (3,) and out.dtype == dtype and out.device == x.device
    assert bool((out >= 0).all())


@pytest.mark.parametrize("impl", IMPLS)
def test_degenerate_cases(impl):
    one = torch.rand(2, 3, 1, 1, dtype=torch.float64)  # a 1x1 image has no edges
    assert torch.equal(
        wasserstein_grad_norm_sq(one, torch.randn_like(one), 2, impl), torch.zeros(2, dtype=one.dtype)
    )
    x = torch.rand(2, 1, 6, 5, dtype=torch.float64)
    const = torch.full_like(x, 3.7)  # constant gradient: in the kernel of L(x)
    val = wasserstein_grad_norm_sq(x, const, 3, impl)
    if impl == "dense":  # g^T L g cancels in floating point: bound by eps * sum |L_ij g_i g_j|
        scale = torch.stack([3.7**2 * wasserstein_laplacian(x[i], 3).abs().sum() for i in range(2)])
        assert bool((val.abs() <= 1e-14 * scale).all())
    else:  # the edge differences g_i - g_j are exactly 0
        assert torch.equal(val, torch.zeros_like(val))
    zero = torch.zeros_like(x)  # no mass: the norm vanishes
    assert torch.equal(
        wasserstein_grad_norm_sq(zero, torch.randn_like(x), 2, impl), torch.zeros(2, dtype=x.dtype)
    )


def test_channels_do_not_interact():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 5, 6, generator=gen, dtype=torch.float64)
    g = torch.randn(2, 3, 5, 6, generator=gen, dtype=torch.float64)
    whole = wasserstein_grad_norm_sq(x, g, 2)
    parts = sum(wasserstein_grad_norm_sq(x[:, c : c + 1], g[:, c : c + 1], 2) for c in range(3))
    torch.testing.assert_close(whole, parts, rtol=1e-13, atol=0)
    lap = wasserstein_laplacian(x[0], 2)
    n = 30
    assert torch.count_nonzero(lap[:n, n:]) == 0 and torch.count_nonzero(lap[n:, :n]) == 0


def test_batch_samples_are_independent():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(4, 1, 6, 6, generator=gen, dtype=torch.float64)
    g = torch.randn(4, 1, 6, 6, generator=gen, dtype=torch.float64)
    full = wasserstein_grad_norm_sq(x, g, 2)
    single = torch.cat([wasserstein_grad_norm_sq(x[i : i + 1], g[i : i + 1], 2) for i in range(4)])
    torch.testing.assert_close(full, single, rtol=1e-14, atol=0)


def test_homogeneity():
    """Eq. 7 is linear in x and quadratic in grad."""
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(2, 1, 5, 7, generator=gen, dtype=torch.float64)
    g = torch.randn(2, 1, 5, 7, generator=gen, dtype=torch.float64)
    base = wasserstein_grad_norm_sq(x, g, 2)
    torch.testing.assert_close(wasserstein_grad_norm_sq(2.5 * x, g, 2), 2.5 * base, rtol=1e-13, atol=0)
    torch.testing.assert_close(wasserstein_grad_norm_sq(x, -3 * g, 2), 9 * base, rtol=1e-13, atol=0)


@pytest.mark.parametrize("impl", ["conv", "edges", "dense"])
def test_gradient_is_2_L_g_and_double_backward(impl):
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(1, 2, 4, 5, generator=gen, dtype=torch.float64)
    g = torch.randn(1, 2, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    (dg,) = torch.autograd.grad(wasserstein_grad_norm_sq(x, g, 2, impl).sum(), g, create_graph=True)
    lap = wasserstein_laplacian(x[0], 2)
    torch.testing.assert_close(dg.reshape(-1), 2 * lap @ g.detach().reshape(-1), rtol=1e-12, atol=1e-12)
    # second derivative: the Hessian of g^T L g is 2 L
    v = torch.randn(1, 2, 4, 5, generator=gen, dtype=torch.float64)
    (hv,) = torch.autograd.grad((dg * v).sum(), g)
    torch.testing.assert_close(hv.reshape(-1), 2 * lap @ v.reshape(-1), rtol=1e-12, atol=1e-12)


def test_gradcheck_through_x_and_grad():
    gen = torch.Generator().manual_seed(4)
    x = (torch.rand(2, 1, 3, 4, generator=gen, dtype=torch.float64) + 0.1).requires_grad_(True)
    g = torch.randn(2, 1, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: wasserstein_grad_norm_sq(a, b, 2, "conv"), (x, g))
    assert torch.autograd.gradgradcheck(lambda a, b: wasserstein_grad_norm_sq(a, b, 2, "conv"), (x, g))


def test_laplacian_pieces_consistent():
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(2, 4, 3, generator=gen, dtype=torch.float64)
    dmat = incidence_matrix((2, 4, 3), 2)
    dsp = incidence_matrix((2, 4, 3), 2, sparse=True)
    assert dsp.is_sparse and torch.equal(dsp.to_dense(), dmat)
    lam = edge_weight_diagonal(x, 2)
    assert lam.shape == (dmat.shape[0],)
    torch.testing.assert_close(
        dmat.T @ (lam[:, None] * dmat), wasserstein_laplacian(x, 2), rtol=1e-13, atol=1e-13
    )
    lap2d = wasserstein_laplacian(x[0], 2)
    torch.testing.assert_close(lap2d, wasserstein_laplacian(x, 2)[:12, :12], rtol=0, atol=0)


@pytest.mark.parametrize("impl", IMPLS)
def test_empty_batch_and_no_channels(impl):
    empty = torch.rand(0, 1, 4, 4)
    assert wasserstein_grad_norm_sq(empty, empty, 2, impl).shape == (0,)
    nochan = torch.rand(3, 0, 4, 4)
    assert torch.equal(wasserstein_grad_norm_sq(nochan, nochan, 2, impl), torch.zeros(3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("impl", IMPLS)
def test_cuda_matches_cpu(impl):
    gen = torch.Generator().manual_seed(6)
    x = torch.rand(3, 2, 9, 7, generator=gen, dtype=torch.float64)
    g = torch.randn(3, 2, 9, 7, generator=gen, dtype=torch.float64)
    dev = torch.device("cuda")
    out = wasserstein_grad_norm_sq(x.to(dev), g.to(dev), 3, impl)
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), wasserstein_grad_norm_sq(x, g, 3, impl), rtol=1e-12, atol=0)
    lap = wasserstein_laplacian(x[0].to(dev), 3, sparse=True)
    assert lap.device.type == "cuda"
    torch.testing.assert_close(lap.to_dense().cpu(), wasserstein_laplacian(x[0], 3), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("nb", ["euclidean", "manhattan"])
def test_radius_beyond_the_image_gives_the_complete_graph(nb):
    gen = torch.Generator().manual_seed(8)
    x = torch.rand(2, 1, 5, 3, generator=gen, dtype=torch.float64)
    g = torch.randn(2, 1, 5, 3, generator=gen, dtype=torch.float64)
    flat_x, flat_g = x.reshape(2, -1), g.reshape(2, -1)
    # complete graph with unit weights: d_i = (n-1) / (n(n-1)) = 1/n for every pixel
    n = 15
    y = flat_x * n
    ref = 0.5 * ((flat_g[:, :, None] - flat_g[:, None, :]) ** 2 * (y[:, :, None] + y[:, None, :]) / 2).sum(
        (1, 2)
    )
    for impl in IMPLS:
        torch.testing.assert_close(
            wasserstein_grad_norm_sq(x, g, 1e6, impl, neighbourhood=nb), ref, rtol=1e-12, atol=0
        )


def test_check_false_skips_only_the_value_checks():
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    g = torch.randn_like(x)
    g[0, 0, 1, 1] = float("nan")
    out = wasserstein_grad_norm_sq(x, g, 2, check=False)
    assert torch.isnan(out[0]) and torch.isfinite(out[1])
    with pytest.raises(ValueError, match="shape mismatch"):
        wasserstein_grad_norm_sq(x, g[..., :3], 2, check=False)


def _alternating(shape, magnitude, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, shape, generator=gen).to(dtype) * 2 - 1
    return signs * magnitude


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype, magnitude", [(torch.float32, 1e30), (torch.float64, 1e160)])
def test_overflow_is_the_same_value_error_in_every_implementation(impl, dtype, magnitude):
    """Issue 9, item 14: finite inputs whose norm does not fit the dtype raise, naming the overflow."""
    x = torch.rand(2, 1, 5, 5, generator=torch.Generator().manual_seed(1), dtype=dtype)
    g = _alternating(x.shape, magnitude, dtype)
    g[1] = torch.randn(1, 5, 5, generator=torch.Generator().manual_seed(2), dtype=dtype)  # sample 1 fits
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(ValueError, match=rf"overflows {name} in sample\(s\) \[0\]"):
        wasserstein_grad_norm_sq(x, g, 2, impl)


@pytest.mark.parametrize("impl", IMPLS)
def test_overflow_of_x_over_volume_is_reported_too(impl):
    x = torch.full((1, 1, 4, 4), 3e38, dtype=torch.float32)  # finite, but x_i / d_i is not
    g = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="overflows float32"):
        wasserstein_grad_norm_sq(x, g, 2, impl)


def test_float32_overflow_fits_in_float64():
    x = torch.rand(1, 1, 5, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    g = _alternating(x.shape, 1e30, torch.float64)
    values = [wasserstein_grad_norm_sq(x, g, 2, impl) for impl in IMPLS]
    assert bool(torch.isfinite(values[0]).all()) and float(values[0]) > 1e58
    for v in values[1:]:
        torch.testing.assert_close(v, values[0], rtol=1e-12, atol=0)
