"""``wbench train`` through ``wbench.cli.main``."""

from __future__ import annotations

import json

import pytest
import torch

from wbench.cli import main
from wbench.cli.train import config_from_args

BASE = [
    "train",
    "--preset",
    "digits_quick",
    "--epochs",
    "1",
    "--limit-train",
    "64",
    "--limit-test",
    "32",
    "--device",
    "cpu",
    "--no-progress",
]


def test_cli_trains_prints_paths_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        *BASE,
        "--out",
        str(out),
        "--noise",
        "laplace",
        "--sigma",
        "0.02",
        "--shared-noise",
        "--seed",
        "7",
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert f"checkpoint: {out / 'checkpoint.pt'}" in text and f"metrics:    {out / 'metrics.json'}" in text
    assert "clean test accuracy" in text and "under laplace noise (sigma=0.02)" in text
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    cfg = ckpt["config"]
    assert (cfg["noise"], cfg["sigma"], cfg["shared_noise"], cfg["seed"], cfg["epochs"]) == (
        "laplace",
        0.02,
        True,
        7,
        1,
    )
    assert (cfg["lr"], cfg["batch_size"]) == (0.05, 64)  # from the preset
    # resuming to two epochs adds one
    resume = [a if a != "1" else "2" for a in args] + ["--resume"]
    assert main(resume) == 0
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert [m["epoch"] for m in metrics] == [1, 2]


def test_cli_errors_are_clean(tmp_path, capsys):
    assert main([*BASE, "--out", str(tmp_path / "a"), "--noise", "wasserstein"]) == 2
    assert "needs sigma" in capsys.readouterr().err
    assert main([*BASE, "--out", str(tmp_path / "b"), "--preset", "nope"]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err
    assert main(["train", "--dataset", "mnist", "--out", str(tmp_path / "c"), "--no-progress"]) == 2
    assert "--data-root" in capsys.readouterr().err


def test_cli_overrides_every_field():
    import argparse

    from wbench.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(
        [
            "train",
            "--preset",
            "lin_cifar",
            "--dataset",
            "mnist",
            "--model",
            "digits_cnn",
            "--data-root",
            "/d",
            "--download",
            "--epochs",
            "3",
            "--batch-size",
            "16",
            "--lr",
            "0.2",
            "--momentum",
            "0.5",
            "--weight-decay",
            "0",
            "--milestones",
            "1",
            "2",
            "--gamma",
            "0.5",
            "--penalty",
            "euclidean",
            "--eta",
            "0.3",
            "--radius",
            "4",
            "--seed",
            "9",
            "--device",
            "cpu",
            "--num-workers",
            "1",
            "--limit-train",
            "10",
            "--limit-test",
            "5",
            "--eval-batch-size",
            "8",
            "--no-augment",
            "--out",
            "o",
        ]
    )
    assert isinstance(args, argparse.Namespace)
    cfg = config_from_args(args)
    assert cfg.to_dict() == {
        "dataset": "mnist",
        "model": "digits_cnn",
        "data_root": "/d",
        "download": True,
        "epochs": 3,
        "batch_size": 16,
        "lr": 0.2,
        "momentum": 0.5,
        "weight_decay": 0.0,
        "milestones": [1, 2],
        "gamma": 0.5,
        "noise": "none",
        "sigma": None,
        "shared_noise": False,
        "penalty": "euclidean",
        "eta": 0.3,
        "radius": 4.0,
        "seed": 9,
        "device": "cpu",
        "out_dir": "o",
        "augment": False,
        "num_workers": 1,
        "limit_train": 10,
        "limit_test": 5,
        "eval_batch_size": 8,
    }
    # no preset: the dataclass defaults, with --milestones given empty
    cfg = config_from_args(parser.parse_args(["train", "--milestones"]))
    assert cfg.milestones == () and cfg.dataset == "digits"


@pytest.mark.parametrize("flag", ["--epochs", "--sigma"])
def test_cli_rejects_non_numbers(flag):
    with pytest.raises(SystemExit):
        main(["train", flag, "many"])
