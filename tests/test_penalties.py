"""Unit tests for wbench.penalties.gradient_penalty_loss (Lin et al., Appendix D)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from wbench.gradnorm import wasserstein_grad_norm_sq, wasserstein_laplacian
from wbench.penalties import gradient_penalty_loss


def small_net(seed: int, dtype=torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Softplus(), nn.Flatten(), nn.Linear(4 * 5 * 6, 3))
    return net.to(dtype)


def batch(seed: int, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(4, 2, 5, 6, generator=gen, dtype=dtype)
    y = torch.randint(0, 3, (4,), generator=gen)
    return x, y


def per_sample_reference(net, x, y, metric, radius=2):
    """Loss and penalty sample by sample: CE, its input gradient, and grad^T G^{-1} grad."""
    losses, pens = [], []
    for i in range(x.shape[0]):
        xi = x[i : i + 1].clone().requires_grad_(True)
        li = F.cross_entropy(net(xi), y[i : i + 1])
        (gi,) = torch.autograd.grad(li, xi)
        flat = gi.reshape(-1)
        if metric == "euclidean":
            pens.append(flat @ flat)
        else:
            pens.append(flat @ wasserstein_laplacian(x[i], radius) @ flat)
        losses.append(li.detach())
    return torch.stack(losses).mean(), torch.stack(pens).mean()


@pytest.mark.parametrize("metric", ["euclidean", "wasserstein"])
def test_matches_per_sample_reference(metric):
    net = small_net(0)
    x, y = batch(1)
    eta = 0.7
    total, data, pen = gradient_penalty_loss(net, x, y, eta, metric, radius=2)
    ref_data, ref_pen = per_sample_reference(net, x, y, metric)
    torch.testing.assert_close(data, ref_data, rtol=1e-12, atol=0)
    torch.testing.assert_close(pen, ref_pen, rtol=1e-10, atol=0)
    torch.testing.assert_close(total, data + eta**2 * pen, rtol=1e-14, atol=0)
    assert total.shape == data.shape == pen.shape == ()


def test_wasserstein_options_are_forwarded():
    net = small_net(1)
    x, y = batch(2)
    _, _, pen = gradient_penalty_loss(
        net, x, y, 0.1, "wasserstein", radius=3, neighbourhood="manhattan", weights="inverse_distance"
    )
    xi = x.clone().requires_grad_(True)
    losses = F.cross_entropy(net(xi), y, reduction="none")
    (g,) = torch.autograd.grad(losses.sum(), xi)
    ref = wasserstein_grad_norm_sq(x, g, 3, "dense", neighbourhood="manhattan", weights="inverse_distance")
    torch.testing.assert_close(pen, ref.mean(), rtol=1e-10, atol=0)


@pytest.mark.parametrize("metric", ["euclidean", "wasserstein"])
def test_total_is_differentiable_in_parameters(metric):
    """d total / d theta matches central finite differences (double backprop through the penalty)."""
    net = small_net(2)
    x, y = batch(3)
    eta = 0.5
    total, _, _ = gradient_penalty_loss(net, x, y, eta, metric)
    weight = net[3].weight
    (grad,) = torch.autograd.grad(total, weight)
    assert x.grad is None
    gen = torch.Generator().manual_seed(5)
    direction = torch.randn(weight.shape, generator=gen, dtype=weight.dtype)
    h = 1e-5
    with torch.no_grad():
        weight += h * direction
    plus = gradient_penalty_loss(net, x, y, eta, metric)[0].detach()
    with torch.no_grad():
        weight -= 2 * h * direction
    minus = gradient_penalty_loss(net, x, y, eta, metric)[0].detach()
    with torch.no_grad():
        weight += h * direction
    fd = (plus - minus) / (2 * h)
    torch.testing.assert_close((grad * direction).sum(), fd, rtol=1e-6, atol=1e-9)


def test_eta_zero_gives_data_loss_and_penalty_still_reported():
    net = small_net(3)
    x, y = batch(4)
    total, data, pen = gradient_penalty_loss(net, x, y, 0.0, "wasserstein")
    assert torch.equal(total, data) and float(pen.detach()) > 0


def test_float32_and_train_step_runs():
    net = small_net(4, torch.float32)
    x, y = batch(5, torch.float32)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    before = [p.detach().clone() for p in net.parameters()]
    total, _, _ = gradient_penalty_loss(net, x, y, 1.0, "wasserstein")
    assert total.dtype == torch.float32
    total.backward()
    opt.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, net.parameters(), strict=True))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"metric": "manhattan"}, "metric"),
        ({"eta": -0.1}, "eta"),
        ({"eta": float("nan")}, "eta"),
        ({"eta": float("inf")}, "eta"),
        ({"metric": "euclidean", "neighbourhood": "manhattan"}, "only apply"),
        ({"metric": "wasserstein", "radius": 0}, "radius"),
        ({"metric": "wasserstein", "impl": "dense"}, "unknown graph option"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    net = small_net(5)
    x, y = batch(6)
    args = {"eta": 0.1, "metric": "euclidean", **kwargs}
    with pytest.raises(ValueError, match=match):
        gradient_penalty_loss(net, x, y, **args)


def test_bad_inputs_raise():
    net = small_net(6)
    x, y = batch(7)
    with pytest.raises(ValueError, match="negative mass"):
        gradient_penalty_loss(net, x - 0.5, y, 0.1, "wasserstein")
    for bad in (float("nan"), float("inf")):
        xb = x.clone()
        xb[1, 0, 2, 2] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            gradient_penalty_loss(net, xb, y, 0.1, "wasserstein")
    with pytest.raises(ValueError, match="one entry per sample"):
        gradient_penalty_loss(net, x, y[:2], 0.1)
    with pytest.raises(ValueError, match="B, C, H, W"):
        gradient_penalty_loss(net, x[0], y, 0.1)
