"""Smoothed classifiers: determinism, sub-batch invariance, abstention, colour images, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from wbench import fastnoise
from wbench.flow import apply_flow_unchecked, laplace_from_words
from wbench.smoothing import LaplaceSmoothing, Smooth, WassersteinSmoothing, _NoiseSampler


def linear_net(c: int, h: int, w: int, k: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, k))


class BrightestPixel(nn.Module):
    """Four classes on a 2x2 image: the index of the pixel holding the most mass."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


class Constant(nn.Module):
    def __init__(self, k: int, label: int):
        super().__init__()
        self.k, self.label = k, label

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], self.k)
        out[:, self.label] = 1.0
        return out


@pytest.fixture(params=["fused", "torch"])
def backend(request, monkeypatch):
    """Run a test on the compiled kernel (CPU float32) and on the torch implementation."""
    if request.param == "fused" and not fastnoise.available():
        pytest.skip("compiled kernel not built")
    if request.param == "torch":
        monkeypatch.setattr(fastnoise, "_LIB", None)
    return request.param


def image(c: int = 1, h: int = 5, w: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(c, h, w, generator=g)


@pytest.mark.parametrize("cls", [WassersteinSmoothing, LaplaceSmoothing])
def test_fixed_seed_gives_identical_certificates(cls, backend):
    x = image()
    a = cls(linear_net(1, 5, 4), 3, 0.05, generator=123, device="cpu")
    b = cls(linear_net(1, 5, 4), 3, 0.05, generator=123, device="cpu")
    assert a.certify(x, 50, 400, 0.01) == b.certify(x, 50, 400, 0.01)
    assert a.predict(x, 300, 0.01) == b.predict(x, 300, 0.01)
    c = cls(linear_net(1, 5, 4), 3, 0.05, generator=124, device="cpu")
    assert not np.array_equal(a.sample_counts(x, 2000), c.sample_counts(x, 2000))


@pytest.mark.parametrize("cls", [WassersteinSmoothing, LaplaceSmoothing])
@pytest.mark.parametrize("shape", [(1, 5, 4), (3, 4, 3), (1, 3, 3)])
def test_counts_do_not_depend_on_sub_batch_size(cls, shape, backend):
    x = image(*shape)
    net = linear_net(*shape)
    ref = cls(net, 3, 0.1, generator=7, device="cpu").sample_counts(x, 1000, batch_size=1000)
    for bs in (1, 7, 333, 999):
        got = cls(net, 3, 0.1, generator=7, device="cpu").sample_counts(x, 1000, batch_size=bs)
        np.testing.assert_array_equal(got, ref)
    assert ref.sum() == 1000


def test_reused_buffers_do_not_leak_between_images(backend):
    a, b = image(seed=1), image(seed=2) * 3.0
    net = linear_net(1, 5, 4)
    sm = WassersteinSmoothing(net, 3, 0.1, generator=0, device="cpu")
    sm.sample_counts(a, 700)
    sm.generator.manual_seed(9)
    reused = sm.sample_counts(b, 700)
    fresh = WassersteinSmoothing(net, 3, 0.1, generator=9, device="cpu").sample_counts(b, 700)
    np.testing.assert_array_equal(reused, fresh)


def test_odd_variable_count_is_batch_invariant(backend):
    # 1 x 2 x 3: 3 vertical + 4 horizontal = 7 flow variables per image (odd)
    x = image(1, 2, 3)
    net = linear_net(1, 2, 3)
    ref = WassersteinSmoothing(net, 3, 0.2, generator=3, device="cpu").sample_counts(x, 500, batch_size=500)
    got = WassersteinSmoothing(net, 3, 0.2, generator=3, device="cpu").sample_counts(x, 500, batch_size=3)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("noise_cls", [WassersteinSmoothing, LaplaceSmoothing])
@pytest.mark.parametrize("c", [1, 3])
def test_noisy_copies_follow_the_definition(noise_cls, c):
    """Each copy is m * Delta(x/m, d) (or m * (x/m + d)) with d the drawn noise divided by the mass."""
    x = image(c, 6, 5, seed=2).double().unsqueeze(0)
    g = torch.Generator().manual_seed(0)
    sampler = _NoiseSampler(x.shape, x.dtype, x.device, noise_cls.noise, 64).bind(x, 0.05, g)
    out = sampler.draw(64).clone()
    m = x.sum()
    d = sampler.eps[:64] * (sampler.scale / m)  # unit-scale draws times b, in normalised mass
    if noise_cls is WassersteinSmoothing:
        v = d[:, : c * 5 * 5].reshape(64, c, 5, 5)
        h = d[:, c * 5 * 5 :].reshape(64, c, 6, 4)
        expected = m * apply_flow_unchecked((x / m).expand(64, c, 6, 5), v, h)
        # Corollary 2: every channel keeps its own mass
        torch.testing.assert_close(out.sum((-2, -1)), x.sum((-2, -1)).expand(64, c), rtol=1e-12, atol=1e-12)
    else:
        expected = m * (x / m + d.reshape(64, c, 6, 5))
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    # the normalised noise has std sigma (Laplace: std = sqrt(2) * scale)
    assert abs(float(d.std()) - 0.05) < 0.05 * 0.05


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_laplace_from_words_is_laplace(dtype):
    g = torch.Generator().manual_seed(11)
    words = torch.empty(100_000, dtype=torch.int64).random_(-(2**63), None, generator=g).view(torch.int32)
    out = torch.empty(200_000, dtype=dtype) if dtype != torch.float32 else None
    draws = laplace_from_words(words, torch.tensor(0.7, dtype=dtype), out).double().numpy()
    assert np.isfinite(draws).all()
    ks = stats.kstest(draws, stats.laplace(scale=0.7).cdf)
    assert ks.pvalue > 1e-3, ks
    assert abs(np.mean(draws > 0) - 0.5) < 0.005
    assert np.abs(draws).max() <= 0.7 * 24 * math.log(2) + 1e-12


def test_constant_classifier_is_certified_with_the_largest_radius():
    x = image()
    sm = WassersteinSmoothing(Constant(4, 2), 4, 0.1, generator=0, device="cpu")
    pred, p_lower, radius = sm.certify(x, 10, 500, 0.05)
    assert pred == 2
    assert p_lower == pytest.approx(0.05 ** (1 / 500), rel=1e-9)
    assert radius == pytest.approx(0.1 / (2 * math.sqrt(2)) * math.log(p_lower / (1 - p_lower)), rel=1e-12)
    assert sm.predict(x, 100, 0.05) == 2


def test_four_way_tie_abstains_under_cohen_not_authors():
    x = torch.ones(1, 2, 2)  # by symmetry each pixel is the brightest with probability 1/4 under flow noise
    sm = WassersteinSmoothing(BrightestPixel(), 4, 0.1, generator=5, device="cpu")
    assert sm.predict(x, 2000, 0.001) == -1
    sm.generator.manual_seed(5)
    pred, p_lower, radius = sm.certify(x, 100, 2000, 0.05, convention="cohen")
    assert p_lower < 0.3 and pred == -1 and radius == 0.0
    sm.generator.manual_seed(5)
    pred_a, p_lower_a, radius_a = sm.certify(x, 100, 2000, 0.05, convention="authors")
    assert p_lower_a == p_lower and pred_a in range(4) and radius_a == 0.0


def test_l2_ground_and_laplace_radii_are_scaled():
    x = image()
    w = WassersteinSmoothing(Constant(3, 0), 3, 0.1, generator=0, device="cpu")
    la = LaplaceSmoothing(Constant(3, 0), 3, 0.1, generator=0, device="cpu")
    r1 = w.certify(x, 10, 100, 0.05, ground="l1")[2]
    assert w.certify(x, 10, 100, 0.05, ground="l2")[2] == pytest.approx(r1 / math.sqrt(2), rel=1e-12)
    assert la.certify(x, 10, 100, 0.05, ground="l1")[2] == pytest.approx(r1 / 2, rel=1e-12)
    assert la.certify(x, 10, 100, 0.05, ground="l2")[2] == pytest.approx(r1 / 2, rel=1e-12)


def test_colour_images_are_certified():
    x = image(3, 6, 6)
    sm = WassersteinSmoothing(linear_net(3, 6, 6, k=5), 5, 0.01, generator=0, device="cpu")
    pred, p_lower, radius = sm.certify(x, 50, 500, 0.05)
    assert 0.0 <= p_lower <= 1.0
    assert (pred == -1 and radius == 0.0) or (0 <= pred < 5 and radius >= 0.0)


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.full((1, 4, 4), float("nan")), "NaN|finite"),
        (-torch.ones(1, 4, 4), "negative"),
        (torch.zeros(1, 4, 4), "zero total mass"),
        (torch.ones(2, 1, 4, 4), "one image"),
        (torch.ones(4, 4), "one image"),
        (torch.ones(1, 4, 4, dtype=torch.int64), "floating"),
    ],
)
def test_bad_images_raise(bad, match):
    sm = WassersteinSmoothing(linear_net(1, 4, 4), 3, 0.1, generator=0, device="cpu")
    with pytest.raises(ValueError, match=match):
        sm.sample_counts(bad, 10)


def test_bad_arguments_raise():
    net = linear_net(1, 4, 4)
    x = image(1, 4, 4)
    with pytest.raises(ValueError, match="sigma"):
        WassersteinSmoothing(net, 3, 0.0)
    with pytest.raises(ValueError, match="num_classes"):
        WassersteinSmoothing(net, 1, 0.1)
    with pytest.raises(ValueError, match="batch_size"):
        WassersteinSmoothing(net, 3, 0.1, batch_size=0)
    with pytest.raises(TypeError):
        Smooth(net, 3, 0.1)
    sm = WassersteinSmoothing(net, 3, 0.1, generator=0, device="cpu")
    with pytest.raises(ValueError, match="alpha"):
        sm.certify(x, 10, 10, 1.5)
    with pytest.raises(ValueError, match="ground"):
        sm.certify(x, 10, 10, 0.05, ground="linf")
    with pytest.raises(ValueError, match="convention"):
        sm.certify(x, 10, 10, 0.05, convention="nobody")
    with pytest.raises(ValueError, match="number of samples"):
        sm.sample_counts(x, -1)
    with pytest.raises(ValueError, match="scores of shape"):
        WassersteinSmoothing(linear_net(1, 4, 4, k=2), 3, 0.1, generator=0).sample_counts(x, 5)
