"""``wbench.attack``: bad input, the numerical building blocks, and the projected Sinkhorn sweep."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import lambertw

from wbench import attack
from wbench.attacks.flow import feasible_flow, project_l1_ball
from wbench.attacks.sinkhorn import PRESETS, cost_kernel, lambertw_exp, projected_sinkhorn
from wbench.flow import apply_flow_unchecked
from wbench.models import build_model
from wbench.options import AttackMethod, Ground
from wbench.smoothing import WassersteinSmoothing


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return build_model("digits_cnn", num_classes=10, width=4).eval()


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.rand(3, 1, 8, 8, generator=g), torch.tensor([1, 2, 3])


@pytest.mark.parametrize(
    "change, message",
    [
        ({"eps": 0.0}, "eps must be a finite number > 0"),
        ({"eps": float("nan")}, "eps must be a finite number > 0"),
        ({"eps": True}, "eps must be a finite number > 0"),
        ({"method": "pgd"}, "unknown attack method 'pgd'"),
        ({"ground": "linf"}, "unknown ground"),
        ({"steps": 0}, "steps must be a positive integer"),
        ({"seed": 1.5}, "seed must be an integer"),
        ({"seed": -1}, "seed must be an integer"),
        ({"solver": "lp", "ground": "l2"}, "L1 ground only"),
        ({"frobnicate": 1}, "frobnicate"),
        ({"method": "sinkhorn", "preset": "imagenet"}, "unknown sinkhorn preset"),
        ({"method": "frank_wolfe", "gamma": -1.0}, "gamma must be a finite number > 0"),
        ({"noise_samples": 8}, "need a smoothing instance"),
        ({"smoothing": "wasserstein"}, "smoothing must be a WassersteinSmoothing"),
    ],
)
def test_bad_options_raise_value_errors_naming_them(net, batch, change, message):
    x, y = batch
    kwargs = {"eps": 0.1, "method": "flow", "steps": 1, **change}
    eps, method = kwargs.pop("eps"), kwargs.pop("method")
    with pytest.raises(ValueError, match=message):
        attack(net, x, y, eps, method, **kwargs)


def test_bad_images_and_labels_raise(net, batch):
    x, y = batch
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        attack(net, bad, y, 0.1, steps=1)
    with pytest.raises(ValueError, match="negative mass"):
        attack(net, x - 0.5, y, 0.1, steps=1)
    with pytest.raises(ValueError, match="zero total mass"):
        attack(net, torch.zeros_like(x), y, 0.1, steps=1)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        attack(net, x[0], y, 0.1, steps=1)
    with pytest.raises(ValueError, match="labels must be an int64 tensor of shape"):
        attack(net, x, y[:2], 0.1, steps=1)
    with pytest.raises(ValueError, match="non-negative class indices"):
        attack(net, x, torch.tensor([1, -2, 3]), 0.1, steps=1)


@pytest.mark.parametrize("method", list(AttackMethod))
@pytest.mark.parametrize("smoothed", [False, True])
def test_a_label_beyond_the_classifiers_classes_raises(net, batch, method, smoothed):
    x, _ = batch
    smooth = WassersteinSmoothing(net, 10, 0.05, device="cpu", seed=0) if smoothed else None
    with pytest.raises(ValueError, match="labels must be below the classifier's 10 classes; got 10"):
        attack(net, x, torch.tensor([1, 10, 3]), 0.1, method, smoothing=smooth, steps=1)


def test_smoothing_must_wrap_the_attacked_model(net, batch):
    x, y = batch
    other = build_model("digits_cnn", num_classes=10, width=4)
    smooth = WassersteinSmoothing(other, 10, 0.05, device="cpu", seed=0)
    with pytest.raises(ValueError, match="different base network"):
        attack(net, x, y, 0.1, smoothing=smooth, steps=1)


def test_method_enum_is_accepted(net, batch):
    x, y = batch
    res = attack(net, x, y, 0.05, AttackMethod.FRANK_WOLFE, steps=2)
    assert res.w1.dtype == np.float64 and res.success.dtype == bool
    assert res.w1.shape == (3,) and bool((res.w1 <= 0.05 * (1 + 1e-6)).all())


def test_lambertw_exp_matches_scipy_without_forming_the_argument():
    s = torch.linspace(-50.0, 700.0, 5001, dtype=torch.float64)
    ref = np.real(lambertw(np.exp(s.numpy())))
    got = lambertw_exp(s).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-8, atol=0)
    # float32: arguments exp(s) far beyond float32's range stay finite and accurate
    s32 = torch.tensor([-math.inf, -100.0, 0.0, 88.0, 1000.0, 1e6], dtype=torch.float32)
    w = lambertw_exp(s32)
    assert bool(torch.isfinite(w).all())
    assert w[0] == 0 and float(w[-1]) == pytest.approx(1e6 - math.log(1e6), rel=1e-6)


def test_l1_ball_projection_matches_the_kkt_conditions():
    g = torch.Generator().manual_seed(1)
    u = torch.randn(5, 40, dtype=torch.float64, generator=g)
    r = torch.tensor([0.5, 1.0, 100.0, 3.0, 0.01], dtype=torch.float64)
    w = project_l1_ball(u, r)
    norms = w.abs().sum(1)
    inside = u.abs().sum(1) <= r
    torch.testing.assert_close(w[inside], u[inside], rtol=0, atol=0)
    torch.testing.assert_close(norms[~inside], r[~inside], rtol=1e-12, atol=0)
    # soft thresholding: every surviving entry moved by the same theta towards 0
    for i in torch.nonzero(~inside).flatten():
        kept = w[i] != 0
        theta = (u[i, kept].abs() - w[i, kept].abs()).unique(sorted=True)
        assert float(theta.max() - theta.min()) < 1e-12
        assert bool((u[i, ~kept].abs() <= theta.max() + 1e-12).all())


def test_feasibility_step_keeps_mass_non_negative_and_only_shrinks_flows():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(4, 1, 6, 6, dtype=torch.float64, generator=g) * (torch.rand(4, 1, 6, 6, generator=g) > 0.5)
    v = torch.randn(4, 1, 5, 6, dtype=torch.float64, generator=g)
    h = torch.randn(4, 1, 6, 5, dtype=torch.float64, generator=g)
    assert bool((apply_flow_unchecked(x, v, h) < 0).any())
    v2, h2 = feasible_flow(x, v, h)
    assert bool((apply_flow_unchecked(x, v2, h2) >= 0).all())
    assert bool((v2.abs() <= v.abs()).all() and (h2.abs() <= h.abs()).all())
    assert bool((torch.sign(v2) * torch.sign(v) >= 0).all())


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("kind", ["one_pixel", "full", "binary", "sparse_bright"])
def test_projected_sinkhorn_is_finite_in_float32_for_any_image_and_preset(preset, kind):
    """The released code overflows when lambda * (normalised pixel) > 88.7; here nothing does."""
    cfg = PRESETS[preset]
    g = torch.Generator().manual_seed(3)
    x = {
        "one_pixel": torch.zeros(1, 1, 8, 8).index_put_(
            (torch.tensor([0]),) * 2 + (torch.tensor([4]),) * 2, torch.tensor([1.0])
        ),
        "full": torch.ones(1, 1, 8, 8),
        "binary": (torch.rand(1, 1, 8, 8, generator=g) > 0.7).float(),
        "sparse_bright": torch.rand(1, 1, 8, 8, generator=g) * (torch.rand(1, 1, 8, 8, generator=g) > 0.9),
    }[kind]
    x[0, 0, 0, 0] += 1.0  # mass >= 1, a bright corner
    x = x.repeat(3, 1, 1, 1) * torch.tensor([1e-3, 1.0, 50.0]).view(
        -1, 1, 1, 1
    )  # tiny, unit and large masses
    mass = x.flatten(1).sum(1).view(-1, 1, 1, 1)
    x_n = x / mass
    y = (x + 0.1 * torch.randn(x.shape, generator=g).sign()) / mass  # a PGD step, some values negative
    cost = cost_kernel(int(cfg["kernel_size"]), Ground.L2, float(cfg["p"]), dtype=torch.float32, device="cpu")
    for eps in (1e-4, 0.01, 0.5):
        z, plan_cost = projected_sinkhorn(x_n, y, cost, torch.full((3,), eps), float(cfg["lam"]), max_iter=30)
        assert bool(torch.isfinite(z).all() and torch.isfinite(plan_cost).all())
        assert bool((z >= 0).all())
        torch.testing.assert_close(z.flatten(1).sum(1), torch.ones(3), rtol=1e-5, atol=0)


def test_empty_batch_and_overflowing_eps_are_value_errors():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 3))
    with pytest.raises(ValueError, match="empty batch"):
        attack(net, torch.empty(0, 1, 6, 6), torch.empty(0, dtype=torch.int64), eps=0.1)
    images, labels = torch.rand(2, 1, 6, 6), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="overflows torch.float32"):
        attack(net, images, labels, eps=1e300, method="flow", steps=2)
