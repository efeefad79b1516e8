"""Smoothed classifiers: the seed and index alone fix the noise; abstention, colour images, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from wbench import fastnoise
from wbench.flow import apply_flow_unchecked
from wbench.noise import sample_laplace_flow
from wbench.smoothing import LaplaceSmoothing, Smooth, WassersteinSmoothing


def linear_net(c: int, h: int, w: int, k: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, k))


class RowwiseLinear(nn.Module):
    """A linear classifier whose score of one image never depends on the rest of the batch."""

    def __init__(self, d: int, k: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(k, d, generator=g), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1)[:, None, :] * self.w).sum(-1)


class BrightestPixel(nn.Module):
    """Four classes on a 2x2 image: the index of the pixel holding the most mass."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


class Constant(nn.Module):
    def __init__(self, k: int, label: int, value: float = 1.0):
        super().__init__()
        self.k, self.label, self.value = k, label, value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], self.k)
        out[:, self.label] = self.value
        return out


@pytest.fixture(params=["fast", "portable"])
def backend(request, monkeypatch):
    """Run a test with the compiled operator and with the portable implementation."""
    if request.param == "fast" and not fastnoise.available():
        pytest.skip("compiled operator not buildable here")
    if request.param == "portable":
        monkeypatch.setattr(fastnoise, "load", lambda: None)
    return request.param


def image(c: int = 1, h: int = 5, w: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(c, h, w, generator=g)


@pytest.mark.parametrize("cls", [WassersteinSmoothing, LaplaceSmoothing])
def test_fixed_seed_and_index_give_identical_certificates(cls, backend):
    x = image()
    a = cls(linear_net(1, 5, 4), 3, 0.05, seed=123, device="cpu")
    b = cls(linear_net(1, 5, 4), 3, 0.05, seed=123, device="cpu")
    assert a.certify(x, 50, 400, 0.01, index=4) == b.certify(x, 50, 400, 0.01, index=4)
    assert a.predict(x, 300, 0.01, index=4) == b.predict(x, 300, 0.01, index=4)
    c = cls(linear_net(1, 5, 4), 3, 0.05, seed=124, device="cpu")
    ref = a.sample_counts(x, 2000, index=4)
    assert not np.array_equal(ref, c.sample_counts(x, 2000, index=4))
    assert not np.array_equal(ref, a.sample_counts(x, 2000, index=5))
    assert not np.array_equal(ref, a.sample_counts(x, 2000, index=4, first_copy=2000))


def test_certificates_depend_on_the_seed_and_index_alone():
    """Fast and portable paths, sub-batches of 1, 7 and 1000, 1 and 2 threads, two halves of a data set."""
    if not fastnoise.available():
        pytest.skip("compiled operator not buildable here")
    g = torch.Generator().manual_seed(3)
    data = [(torch.rand(1, 6, 6, generator=g), i) for i in range(5)]  # (image, data-set index)
    net = RowwiseLinear(36, 3)

    def run(indices, batch_size):
        sm = WassersteinSmoothing(net, 3, 0.05, seed=11, batch_size=batch_size, device="cpu")
        return {
            i: (sm.sample_counts(x, 150, index=i).tolist(), sm.certify(x, 20, 150, 0.05, index=i))
            for x, i in (data[i] for i in indices)
        }

    reference = run(range(5), 1000)
    counts = [c for c, _ in reference.values()]
    assert all(min(c) < 150 for c in counts)  # the noise moves predictions: counts can tell streams apart
    threads = torch.get_num_threads()
    try:
        for portable in (False, True):
            with pytest.MonkeyPatch.context() as mp:
                if portable:
                    mp.setattr(fastnoise, "load", lambda: None)
                for n_threads in (1, 2):
                    torch.set_num_threads(n_threads)
                    for batch_size in (1, 7, 1000):
                        assert run(range(5), batch_size) == reference, (portable, n_threads, batch_size)
                    halves = {**run([3, 4], 7), **run([0, 1, 2], 1000)}
                    assert halves == reference, (portable, n_threads)
    finally:
        torch.set_num_threads(threads)


def test_copies_are_the_stream_flow_plans_scaled_by_the_mass():
    """Copy k of image i is Delta(x, m * plan_k), plan_k the stream's flow plan (Eq. 33, Def. 3.1)."""
    x = image(3, 6, 5, seed=2).double()

    class Capture(nn.Module):
        def forward(self, z):
            self.seen = z.clone()
            return torch.zeros(z.shape[0], 2, dtype=z.dtype)

    net = Capture()
    sm = WassersteinSmoothing(net, 2, 0.05, seed=8, device="cpu")
    sm.sample_counts(x, 64, index=31, first_copy=100)
    plan = sample_laplace_flow((64, 3, 6, 5), 0.05, seed=8, index=31, first_copy=100, dtype=torch.float64)
    m = x.sum()
    expected = apply_flow_unchecked(x.expand(64, 3, 6, 5), m * plan.vertical, m * plan.horizontal)
    torch.testing.assert_close(net.seen, expected, rtol=1e-12, atol=1e-14)
    # Corollary 2: every channel keeps its own mass
    torch.testing.assert_close(net.seen.sum((-2, -1)), x.sum((-2, -1)).expand(64, 3), rtol=1e-12, atol=1e-12)
    # the normalised noise has std sigma (Laplace: std = sqrt(2) * scale)
    flat = torch.cat((plan.vertical.flatten(), plan.horizontal.flatten()))
    assert abs(float(flat.std()) - 0.05) < 0.05 * 0.05


def test_constant_classifier_is_certified_with_the_largest_radius():
    x = image()
    sm = WassersteinSmoothing(Constant(4, 2), 4, 0.1, seed=0, device="cpu")
    pred, p_lower, radius = sm.certify(x, 10, 500, 0.05, index=0)
    assert pred == 2
    assert p_lower == pytest.approx(0.05 ** (1 / 500), rel=1e-9)
    assert radius == pytest.approx(0.1 / (2 * math.sqrt(2)) * math.log(p_lower / (1 - p_lower)), rel=1e-12)
    assert sm.predict(x, 100, 0.05, index=0) == 2


def test_four_way_tie_abstains_under_cohen_not_authors():
    x = torch.ones(1, 2, 2)  # by symmetry each pixel is the brightest with probability 1/4 under flow noise
    sm = WassersteinSmoothing(BrightestPixel(), 4, 0.1, seed=5, device="cpu")
    assert sm.predict(x, 2000, 0.001, index=0) == -1
    pred, p_lower, radius = sm.certify(x, 100, 2000, 0.05, index=0, convention="cohen")
    assert p_lower < 0.3 and pred == -1 and radius == 0.0
    pred_a, p_lower_a, radius_a = sm.certify(x, 100, 2000, 0.05, index=0, convention="authors")
    assert p_lower_a == p_lower and pred_a in range(4) and radius_a == 0.0


def test_l2_ground_and_laplace_radii_are_scaled():
    x = image()
    w = WassersteinSmoothing(Constant(3, 0), 3, 0.1, seed=0, device="cpu")
    la = LaplaceSmoothing(Constant(3, 0), 3, 0.1, seed=0, device="cpu")
    r1 = w.certify(x, 10, 100, 0.05, index=0, ground="l1")[2]
    assert w.certify(x, 10, 100, 0.05, index=0, ground="l2")[2] == pytest.approx(r1 / math.sqrt(2), rel=1e-12)
    assert la.certify(x, 10, 100, 0.05, index=0, ground="l1")[2] == pytest.approx(r1 / 2, rel=1e-12)
    assert la.certify(x, 10, 100, 0.05, index=0, ground="l2")[2] == pytest.approx(r1 / 2, rel=1e-12)


def test_colour_images_are_certified():
    x = image(3, 6, 6)
    sm = WassersteinSmoothing(linear_net(3, 6, 6, k=5), 5, 0.01, seed=0, device="cpu")
    pred, p_lower, radius = sm.certify(x, 50, 500, 0.05, index=0)
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
    sm = WassersteinSmoothing(linear_net(1, 4, 4), 3, 0.1, seed=0, device="cpu")
    with pytest.raises(ValueError, match=match):
        sm.sample_counts(bad, 10, index=0)


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
    sm = WassersteinSmoothing(net, 3, 0.1, seed=0, device="cpu")
    for alpha in (1.5, 0.5, 0.7):  # one range, (0, 1/2), for CERTIFY and PREDICT
        with pytest.raises(ValueError, match="alpha"):
            sm.certify(x, 10, 10, alpha, index=0)
        with pytest.raises(ValueError, match="alpha"):
            sm.predict(x, 10, alpha, index=0)
    with pytest.raises(ValueError, match="ground"):
        sm.certify(x, 10, 10, 0.05, index=0, ground="linf")
    with pytest.raises(ValueError, match="convention"):
        sm.certify(x, 10, 10, 0.05, index=0, convention="nobody")
    with pytest.raises(ValueError, match="number of samples"):
        sm.sample_counts(x, -1, index=0)
    with pytest.raises(ValueError, match="scores of shape"):
        WassersteinSmoothing(linear_net(1, 4, 4, k=2), 3, 0.1, seed=0).sample_counts(x, 5, index=0)
    with pytest.raises(ValueError, match="seed"):
        WassersteinSmoothing(net, 3, 0.1, seed=-1)
    with pytest.raises(ValueError, match="index"):
        sm.sample_counts(x, 5, index=2**32)
    with pytest.raises(TypeError):
        sm.certify(x, 10, 10, 0.05)  # the data-set index is required


@pytest.mark.parametrize("n0, n", [(0, 10), (-3, 10), (10, 0), (True, 10)])
def test_certify_rejects_fewer_than_one_sample_per_round(n0, n):
    # issue 9, item 13: n0 = 0 used to guess class 0 without sampling
    sm = WassersteinSmoothing(Constant(3, 2), 3, 0.1, seed=0, device="cpu")
    with pytest.raises(ValueError, match="n0|n must"):
        sm.certify(image(), n0, n, 0.05, index=0)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_scores_are_an_error_naming_the_image(value):
    # issue 9, item 8: a network that returns NaN used to be "certified" as class 0
    sm = WassersteinSmoothing(Constant(3, 1, value), 3, 0.1, seed=0, batch_size=7, device="cpu")
    with pytest.raises(ValueError, match="non-finite scores.*image 17"):
        sm.certify(image(), 10, 20, 0.05, index=17)


@pytest.mark.parametrize(
    "mass, sigma, dtype, match",
    [
        (1e-30, 1e-10, torch.float32, "underflows.*smallest normal"),  # m sigma / sqrt 2 is subnormal
        (1.0, 1e-12, torch.float32, "underflows.*resolution"),  # far below one ulp of the pixels
        (1e-300, 1e-10, torch.float64, "underflows"),
        (1.0, 1e38, torch.float32, "overflows"),
        (1e30, 1e10, torch.float32, "overflows"),
    ],
)
def test_noise_that_does_not_fit_the_dtype_is_an_error(mass, sigma, dtype, match):
    # issue 9, item 9: copies used to equal x (or be inf) and get a certificate
    x = image(1, 4, 4).to(dtype)
    x = x / x.sum() * mass
    sm = WassersteinSmoothing(linear_net(1, 4, 4).to(dtype), 3, sigma, seed=0, device="cpu")
    with pytest.raises(ValueError, match=match):
        sm.certify(x, 10, 20, 0.05, index=0)


def test_tiny_masses_with_representable_noise_are_certified():
    x = image(1, 4, 4)
    x = x / x.sum() * 1e-30
    sm = WassersteinSmoothing(linear_net(1, 4, 4), 3, 0.1, seed=0, device="cpu")
    assert sm.sample_counts(x, 20, index=0).sum() == 20


def test_progress_reports_every_sub_batch():
    seen = []
    sm = WassersteinSmoothing(Constant(3, 0), 3, 0.1, seed=0, batch_size=40, device="cpu")
    sm.certify(image(), 30, 100, 0.05, index=0, progress=seen.append)
    assert seen == [30, 40, 40, 20]
