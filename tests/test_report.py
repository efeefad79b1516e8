"""`wbench report --quick` and `wbench reproduce`: files written, rerun reuses finished parts."""

from __future__ import annotations

import json

import pytest

from wbench.cli import main
from wbench.reproduce import ReproduceConfig, format_results_table


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    assert main(["report", "--out", str(out), "--quick", "--device", "cpu", "--no-progress"]) == 0
    return out


def snapshot(out):
    return {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.suffix in (".pt", ".csv")}


def test_report_folder_contents(quick_report):
    out = quick_report
    for name in (
        "report.md",
        "results.md",
        "summary.json",
        "run_config.json",
        "reproduce.json",
        "verification.json",
    ):
        assert (out / name).is_file(), name
    assert (out / "certified_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["quick"] is True and summary["seed"] == 0
    assert {r["noise"] for r in summary["runs"]} == {"wasserstein", "laplace"}
    for run in summary["runs"]:
        assert run["images"] == 12
        assert len(run["certified_accuracy"]) == len(summary["radii"])
        assert all(0.0 <= a <= 1.0 for a in run["certified_accuracy"])
        # certified accuracy cannot grow with the radius
        assert all(
            a >= b for a, b in zip(run["certified_accuracy"][:-1], run["certified_accuracy"][1:], strict=True)
        )
    assert summary["verification"]["all_pass"] is True
    text = (out / "report.md").read_text()
    assert "| Wasserstein | 0.01 |" in text and "| Laplace baseline | 0.01 |" in text
    assert "n0 = 32, n = 200" in text and "certified_accuracy.png" in text


def test_report_rerun_reuses_models_and_certificates(quick_report):
    before = snapshot(quick_report)
    assert len([p for p in before if p.suffix == ".pt"]) == 2
    assert main(["report", "--out", str(quick_report), "--quick", "--device", "cpu", "--no-progress"]) == 0
    assert snapshot(quick_report) == before
    summary = json.loads((quick_report / "summary.json").read_text())
    assert summary["verification"]["reused"] is True


def test_reproduce_with_given_checkpoints(quick_report, tmp_path):
    ckpt = quick_report / "train" / "wasserstein_sigma0.01" / "checkpoint.pt"
    args = ["reproduce", "--out", str(tmp_path), "--sigmas", "0.01", "--noises", "wasserstein", "--max", "4",
            "--n0", "16", "--n", "64", "--device", "cpu", "--no-progress",
            "--checkpoint", f"wasserstein:0.01={ckpt}"]  # fmt: skip
    assert main(args) == 0
    assert not (tmp_path / "train").exists()  # nothing was trained
    result = json.loads((tmp_path / "reproduce.json").read_text())
    assert result["runs"][0]["checkpoint"] == str(ckpt) and result["runs"][0]["images"] == 4
    text = (tmp_path / "results.md").read_text()
    assert text.startswith("# Certified accuracy (%) vs W1 radius: scikit-learn's 8x8 digits")
    assert "## Radius in normalised mass" in text and "## Radius in pixel mass" in text
    assert result["table"] in text and result["table_pixel_mass"] in text


def test_reproduce_config_validation():
    with pytest.raises(ValueError, match="dataset"):
        ReproduceConfig(dataset="imagenet").resolved()
    with pytest.raises(ValueError, match="noise"):
        ReproduceConfig(noises=("gauss",)).resolved()
    with pytest.raises(ValueError, match="sigmas"):
        ReproduceConfig(sigmas=(0.01, -1.0)).resolved()
    with pytest.raises(ValueError, match="matches no"):
        ReproduceConfig(sigmas=(0.01,), checkpoints={"wasserstein:0.5": "x.pt"}).resolved()
    cfg = ReproduceConfig(dataset="mnist").resolved()
    assert cfg.sigmas == (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5) and (cfg.n0, cfg.n, cfg.alpha) == (
        1000,
        10000,
        0.05,
    )
    assert ReproduceConfig(dataset="cifar10").resolved().sigmas == (5e-5, 1e-4, 2e-4, 5e-4, 1e-3)


def test_results_table_has_best_sigma_rows():
    runs = [
        {"noise": "wasserstein", "sigma": s, "clean_smoothed_accuracy": 0.9, "mean_certified_radius": 0.01,
         "certified_accuracy": acc}
        for s, acc in ((0.01, [0.9, 0.5]), (0.02, [0.8, 0.6]))
    ]  # fmt: skip
    table = format_results_table(runs, [0.0, 0.01]).splitlines()
    assert len(table) == 2 + 2 + 1
    assert table[-1].endswith("| **90.0** | **60.0** |")
