"""Write small data sets in the real on-disk formats that torchvision reads.

* MNIST: uncompressed IDX files ``ROOT/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``
  (big-endian magic ``0x00000803`` / ``0x00000801``, then the dimensions, then uint8 data),
  which ``torchvision.datasets.MNIST`` checks only for existence.
* CIFAR-10: pickled batches ``ROOT/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``
  as in the python release: dicts with ``data`` (N, 3072) uint8 in CHW order and ``labels``.
  ``torchvision.datasets.CIFAR10`` verifies each file against the md5 of the real release,
  which a fixture cannot match; :func:`cifar10_checksums` returns the md5s of the written
  files so that a test can point torchvision's lists at them (``monkeypatch.setattr``) and
  keep the integrity check running, instead of skipping it.
"""

from __future__ import annotations

import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np

CIFAR_BATCHES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5")
CIFAR_LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _write_idx(path: Path, array: np.ndarray) -> None:
    assert array.dtype == np.uint8
    magic = 0x0800 | array.ndim  # type code 0x08 = unsigned byte
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.tobytes(order="C"))


def write_mnist(root: Path, n_train: int = 40, n_test: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    """Random 28x28 uint8 digits with labels 0..9 in IDX format; returns the arrays written."""
    rng = np.random.default_rng(seed)
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        rng.shuffle(labels)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
        out[f"{prefix}_images"], out[f"{prefix}_labels"] = images, labels
    return out


def write_cifar10(root: Path, n_per_batch: int = 6, n_test: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    """Random CIFAR-10-format batches; returns the images (N, 3, 32, 32) and labels per split."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    train_x, train_y = [], []
    for name, n in [*((b, n_per_batch) for b in CIFAR_BATCHES), ("test_batch", n_test)]:
        images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        entry = {
            "batch_label": name,
            "data": images.reshape(n, 3072),
            "labels": labels,
            "filenames": [f"{name}_{i}.png" for i in range(n)],
        }
        with open(folder / name, "wb") as fh:
            pickle.dump(entry, fh, protocol=2)
        if name == "test_batch":
            test_x, test_y = images, np.asarray(labels)
        else:
            train_x.append(images)
            train_y.extend(labels)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump(
            {"label_names": CIFAR_LABEL_NAMES, "num_cases_per_batch": n_per_batch, "num_vis": 3072}, fh
        )
    return {
        "train_images": np.concatenate(train_x),
        "train_labels": np.asarray(train_y),
        "test_images": test_x,
        "test_labels": test_y,
    }


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def cifar10_checksums(root: Path) -> dict[str, object]:
    """``train_list``, ``test_list`` and ``meta`` for ``torchvision.datasets.CIFAR10`` with the md5s
    of the files written under ``root`` (for ``monkeypatch.setattr(CIFAR10, key, value)``)."""
    folder = Path(root) / "cifar-10-batches-py"
    return {
        "train_list": [[name, _md5(folder / name)] for name in CIFAR_BATCHES],
        "test_list": [["test_batch", _md5(folder / "test_batch")]],
        "meta": {"filename": "batches.meta", "key": "label_names", "md5": _md5(folder / "batches.meta")},
    }
