"""Classifiers used by the two papers, in one registry.

All models take images in pixel (= mass) space, ``(B, C, H, W)`` with values in
``[0, 1]`` before noise. Any per-channel normalisation is a :class:`Normalize`
layer inside the model, so smoothing noise (Levine & Feizi, Eq. 33) is always
applied to the unnormalised image, as the certificate requires.

Registry (:data:`MODELS`):

``mnist_wong``
    Wong et al. (2019)'s MNIST net, used by Levine & Feizi (Appendix B):
    Conv(1->16, k4, s2, p1), ReLU, Conv(16->32, k4, s2, p1), ReLU,
    FC(1568->100), ReLU, FC(10).
``cifar_resnet18``
    The common CIFAR-10 ResNet-18 (3x3 stem, no max-pool), used by Levine & Feizi
    for CIFAR-10 (Appendix B, following Wong et al.).
``resnet20_softplus``
    He et al. (2016)'s CIFAR ResNet-20 (3 stages of 3 basic blocks, 16/32/64
    channels, parameter-free "option A" shortcuts) with softplus activations, as in
    Lin et al. (2019), Section 5.1 and Appendix D: softplus keeps the input
    gradient smooth for gradient-norm penalties.
``digits_cnn``
    A small CNN for scikit-learn's 8x8 digits (1 channel), the embedded CPU data set.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wbench.runio import load_checkpoint

#: CIFAR-10 training-set per-channel mean and std of pixel values in [0, 1].
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` as the first layer of a model.

    Keeping normalisation inside the model lets smoothing noise act in pixel
    (mass) space, as Levine & Feizi do for CIFAR-10 (Appendix B).

    Parameters
    ----------
    mean, std : sequence of float
        One value per channel; every ``std`` must be positive and finite.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        mean_t = torch.as_tensor(list(mean), dtype=torch.float32)
        std_t = torch.as_tensor(list(std), dtype=torch.float32)
        if mean_t.ndim != 1 or mean_t.numel() == 0 or mean_t.shape != std_t.shape:
            raise ValueError(
                "mean and std must be non-empty 1-D sequences of equal length; "
                f"got {list(mean)} and {list(std)}"
            )
        if not bool(torch.isfinite(mean_t).all()) or not bool(torch.isfinite(std_t).all()):
            raise ValueError("mean and std must be finite")
        if bool((std_t <= 0).any()):
            raise ValueError(f"std must be positive; got {list(std)}")
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1))
        self.register_buffer("std", std_t.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.mean.shape[1]:
            raise ValueError(
                f"Normalize expects (B, {self.mean.shape[1]}, H, W) input; got shape {tuple(x.shape)}"
            )
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def _maybe_normalize(mean: Sequence[float] | None, std: Sequence[float] | None) -> list[nn.Module]:
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std for normalisation, or neither")
    return [] if mean is None else [Normalize(mean, std)]


def mnist_wong(num_classes: int = 10, in_channels: int = 1) -> nn.Sequential:
    """Wong et al. (2019)'s MNIST classifier (28x28 input)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 100),
        nn.ReLU(),
        nn.Linear(100, num_classes),
    )


def digits_cnn(num_classes: int = 10, in_channels: int = 1, width: int = 32) -> nn.Sequential:
    """Small CNN for 8x8 images: two 3x3 convs, 2x2 max-pool, two linear layers."""
    if width < 1:
        raise ValueError(f"width must be a positive integer; got {width}")
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * width * 4 * 4, 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    )


class _PadShortcut(nn.Module):
    """He et al.'s parameter-free "option A" shortcut: subsample, zero-pad the new channels."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.stride = stride
        self.extra = c_out - c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        lo = self.extra // 2
        return F.pad(x, (0, 0, 0, 0, lo, self.extra - lo))


class _BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-BN layers, an activation, and a shortcut.

    ``shortcut="projection"`` is ResNet-18's 1x1 conv-BN ("option B"); ``"pad"`` is the CIFAR
    ResNet-20's parameter-free subsample-and-zero-pad ("option A"). Either is the identity when
    the shape does not change.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, act: nn.Module, shortcut: str):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.act = act
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            if shortcut == "projection":
                self.shortcut = nn.Sequential(
                    nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
                )
            else:
                self.shortcut = _PadShortcut(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.shortcut(x))


class CifarResNet18(nn.Module):
    """ResNet-18 for 32x32 inputs: 3x3 stem, no max-pool, stages of 64/128/256/512 channels."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        mean: Sequence[float] | None = CIFAR10_MEAN,
        std: Sequence[float] | None = CIFAR10_STD,
    ):
        super().__init__()
        self.normalize = nn.Sequential(*_maybe_normalize(mean, std))
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        layers: list[nn.Module] = []
        c_in = 64
        for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [
                _BasicBlock(c_in, c_out, stride, nn.ReLU(), "projection"),
                _BasicBlock(c_out, c_out, 1, nn.ReLU(), "projection"),
            ]
            c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))
        out = self.layers(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


class ResNet20Softplus(nn.Module):
    """He et al. (2016)'s ResNet-20 for CIFAR-10 with softplus activations (Lin et al., 2019)."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        mean: Sequence[float] | None = CIFAR10_MEAN,
        std: Sequence[float] | None = CIFAR10_STD,
        blocks_per_stage: int = 3,
        beta: float = 1.0,
    ):
        super().__init__()
        if blocks_per_stage < 1:
            raise ValueError(f"blocks_per_stage must be >= 1; got {blocks_per_stage}")
        if not beta > 0:
            raise ValueError(f"softplus beta must be positive; got {beta}")
        self.normalize = nn.Sequential(*_maybe_normalize(mean, std))
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.act = nn.Softplus(beta=beta)
        layers: list[nn.Module] = []
        c_in = 16
        for c_out, stride in ((16, 1), (32, 2), (64, 2)):
            for k in range(blocks_per_stage):
                block_stride = stride if k == 0 else 1
                layers.append(_BasicBlock(c_in, c_out, block_stride, nn.Softplus(beta=beta), "pad"))
                c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(self.normalize(x))))
        out = self.layers(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


#: Registry: model name -> constructor (keyword arguments only).
MODELS: dict[str, Callable[..., nn.Module]] = {
    "mnist_wong": mnist_wong,
    "cifar_resnet18": CifarResNet18,
    "resnet20_softplus": ResNet20Softplus,
    "digits_cnn": digits_cnn,
}


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model by name.

    Parameters
    ----------
    name : str
        A key of :data:`MODELS`.
    **kwargs
        Passed to the constructor (e.g. ``num_classes``, ``in_channels``, ``mean``/``std``).

    Raises
    ------
    ValueError
        For an unknown name (the message lists the registered ones) or bad keyword arguments.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(map(repr, MODELS))}")
    try:
        return MODELS[name](**kwargs)
    except TypeError as exc:
        raise ValueError(f"bad arguments for model {name!r}: {exc}") from exc


def load_model(
    checkpoint_path: str, device: str | torch.device | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from a training checkpoint (loaded with ``weights_only=True``).

    Parameters
    ----------
    checkpoint_path : str
        A ``checkpoint.pt`` written by :func:`wbench.training.train`.
    device : str or torch.device, optional
        Where to put the model (``"auto"``/``None`` picks CUDA when available).

    Returns
    -------
    (model, checkpoint)
        The model in eval mode on ``device`` and the checkpoint dict.

    Raises
    ------
    ValueError
        One line naming the file: unreadable (:func:`wbench.runio.load_checkpoint`), not a
        model checkpoint, or weights that do not fit the architecture it names.
    """
    from wbench.devices import resolve_device

    dev = resolve_device(device)
    ckpt = load_checkpoint(checkpoint_path, map_location="cpu")
    missing = [k for k in ("model_name", "model_kwargs", "state_dict") if k not in ckpt]
    if missing:
        raise ValueError(f"{checkpoint_path} is not a wbench model checkpoint (missing {missing})")
    if not isinstance(ckpt["model_kwargs"], dict) or not isinstance(ckpt["state_dict"], dict):
        raise ValueError(f"{checkpoint_path} is not a wbench model checkpoint (model_kwargs or state_dict)")
    try:
        model = build_model(ckpt["model_name"], **ckpt["model_kwargs"])
    except ValueError as exc:
        raise ValueError(f"checkpoint {checkpoint_path}: {exc}") from None
    model_keys, saved = model.state_dict(), ckpt["state_dict"]
    absent = [k for k in model_keys if k not in saved]
    extra = [k for k in saved if k not in model_keys]
    shapes = [
        k for k in model_keys
        if k in saved and getattr(saved[k], "shape", None) != model_keys[k].shape
    ]  # fmt: skip
    if absent or extra or shapes:
        detail = "; ".join(
            f"{what} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for what, keys in (("missing", absent), ("unexpected", extra), ("wrong shape of", shapes))
            if keys
        )
        raise ValueError(
            f"checkpoint {checkpoint_path}: its weights do not fit a {ckpt['model_name']!r} model "
            f"with {ckpt['model_kwargs']} ({detail}); was it written for another architecture?"
        )
    model.load_state_dict(saved)
    return model.to(dev).eval(), ckpt
