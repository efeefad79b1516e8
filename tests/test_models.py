"""Model registry: output shapes, Normalize, build/load errors."""

from __future__ import annotations

import pytest
import torch

from wbench.models import CIFAR10_MEAN, CIFAR10_STD, MODELS, Normalize, build_model, load_model
from wbench.runio import atomic_torch_save

SHAPES = {
    "mnist_wong": (1, 28, 28),
    "cifar_resnet18": (3, 32, 32),
    "resnet20_softplus": (3, 32, 32),
    "digits_cnn": (1, 8, 8),
}


def test_registry_names():
    assert set(MODELS) == set(SHAPES)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_output_shape(name):
    torch.manual_seed(0)
    model = build_model(name).eval()
    x = torch.rand(2, *SHAPES[name], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 10) and out.dtype == torch.float32
    assert bool(torch.isfinite(out).all())


def test_num_classes_and_parameter_counts():
    assert build_model("digits_cnn", num_classes=3)(torch.rand(1, 1, 8, 8)).shape == (1, 3)
    n_params = {name: sum(p.numel() for p in build_model(name).parameters()) for name in SHAPES}
    # Wong et al.'s net: 16*1*16+16 + 32*16*16+32 + 1568*100+100 + 100*10+10
    assert n_params["mnist_wong"] == 272 + 8224 + 156900 + 1010
    # He et al.'s ResNet-20 has 0.27M parameters; the CIFAR ResNet-18 11.17M
    assert 0.26e6 < n_params["resnet20_softplus"] < 0.28e6
    assert 11.1e6 < n_params["cifar_resnet18"] < 11.2e6


def test_resnet20_uses_softplus_not_relu():
    model = build_model("resnet20_softplus")
    kinds = {type(m).__name__ for m in model.modules()}
    assert "Softplus" in kinds and "ReLU" not in kinds
    # smooth activations: the input gradient changes continuously, a prerequisite for penalties
    torch.manual_seed(0)
    model.eval()
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    (g,) = torch.autograd.grad(model(x)[0, 0], x, create_graph=True)
    (gg,) = torch.autograd.grad(g.sum(), x)
    assert float(gg.abs().sum()) > 0


def test_normalize_is_per_channel_and_inside_cifar_models():
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    layer = Normalize(mean, std)
    x = torch.rand(2, 3, 4, 5, dtype=torch.float32)
    expected = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(layer(x), expected, rtol=1e-6, atol=1e-7)
    for name in ("cifar_resnet18", "resnet20_softplus"):
        norms = [m for m in build_model(name).modules() if isinstance(m, Normalize)]
        assert len(norms) == 1
        torch.testing.assert_close(norms[0].mean.flatten(), torch.tensor(CIFAR10_MEAN))
        torch.testing.assert_close(norms[0].std.flatten(), torch.tensor(CIFAR10_STD))
    # Normalize's statistics travel with the state dict
    assert "normalize.0.mean" in build_model("cifar_resnet18").state_dict()
    assert not any(isinstance(m, Normalize) for m in build_model("mnist_wong").modules())
    assert not any(
        isinstance(m, Normalize) for m in build_model("cifar_resnet18", mean=None, std=None).modules()
    )


def test_normalize_validation():
    with pytest.raises(ValueError, match="std must be positive"):
        Normalize((0.0,), (0.0,))
    with pytest.raises(ValueError, match="equal length"):
        Normalize((0.0, 0.1), (1.0,))
    with pytest.raises(ValueError, match="finite"):
        Normalize((float("nan"),), (1.0,))
    with pytest.raises(ValueError, match=r"expects \(B, 3, H, W\)"):
        Normalize((0, 0, 0), (1, 1, 1))(torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="both mean and std"):
        build_model("cifar_resnet18", mean=None)


def test_build_model_errors_list_names():
    with pytest.raises(ValueError, match="unknown model 'vgg'.*'mnist_wong'.*'digits_cnn'"):
        build_model("vgg")
    with pytest.raises(ValueError, match="bad arguments for model 'mnist_wong'"):
        build_model("mnist_wong", depth=3)


def test_load_model_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = build_model("digits_cnn", num_classes=4)
    path = tmp_path / "ckpt.pt"
    atomic_torch_save(
        {"model_name": "digits_cnn", "model_kwargs": {"num_classes": 4}, "state_dict": model.state_dict()},
        path,
    )
    loaded, ckpt = load_model(str(path), device="cpu")
    assert not loaded.training and ckpt["model_name"] == "digits_cnn"
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=0)
    atomic_torch_save({"state_dict": model.state_dict()}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="missing"):
        load_model(str(tmp_path / "bad.pt"))
    with pytest.raises(ValueError, match="does not exist"):
        load_model(str(tmp_path / "absent.pt"))
