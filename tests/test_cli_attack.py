"""`wbench attack`: CSV rows per image and budget, resume, summary JSON and PNGs, settings, bad input."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from wbench.cli import main
from wbench.runio import read_csv_rows
from wbench.training import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]

ARGS = ["--steps", "3", "--device", "cpu", "--no-progress", "--batch", "4"]
PNG = b"\x89PNG\r\n\x1a\n"


def run_attack(checkpoint, out, *extra):
    return main(["attack", checkpoint, "--out", str(out), *ARGS, *extra])


def key_fields(rows):
    return [(r["index"], r["eps"], r["label"], r["prediction"], r["success"], r["abstain"]) for r in rows]


def test_attack_writes_rows_summary_and_plots(checkpoint, tmp_path):
    assert run_attack(checkpoint, tmp_path, "--method", "flow", "--eps", "0.05,0.2", "--max", "5") == 0
    rows = read_csv_rows(tmp_path / "attack.csv")
    assert sorted((int(r["index"]), float(r["eps"])) for r in rows) == [
        (i, e) for i in range(5) for e in (0.05, 0.2)
    ]
    assert all(float(r["w1"]) <= float(r["eps"]) * (1 + 1e-6) for r in rows)
    text = (tmp_path / "summary.json").read_text()
    summary = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert summary["images"] == 5 and [p["eps"] for p in summary["per_eps"]] == [0.05, 0.2]
    for p in summary["per_eps"]:
        sel = [r for r in rows if float(r["eps"]) == p["eps"]]
        assert p["robust_accuracy"] == pytest.approx(sum(r["prediction"] == r["label"] for r in sel) / 5)
    assert summary["mean_image_mass"] > 1 and summary["settings"]["method"] == "flow"
    assert (tmp_path / "robust_accuracy.png").read_bytes()[:8] == PNG
    assert (tmp_path / "examples.png").read_bytes()[:8] == PNG


def test_resume_skips_done_pairs_and_adds_budgets(checkpoint, tmp_path):
    full, split = tmp_path / "full", tmp_path / "split"
    assert (
        run_attack(checkpoint, full, "--method", "frank_wolfe", "--eps", "0.1,0.3", "--indices", "0:6") == 0
    )
    assert run_attack(checkpoint, split, "--method", "frank_wolfe", "--eps", "0.1", "--indices", "0:4") == 0
    # a torn last line from a crash is dropped and that pair redone
    csv_path = split / "attack.csv"
    csv_path.write_bytes(csv_path.read_bytes()[:-7])
    assert (
        run_attack(checkpoint, split, "--method", "frank_wolfe", "--eps", "0.1,0.3", "--indices", "0:6") == 0
    )
    a, b = read_csv_rows(full / "attack.csv"), read_csv_rows(csv_path)
    assert len(b) == 12
    assert sorted(key_fields(a)) == sorted(key_fields(b))
    wa = {(r["index"], r["eps"]): float(r["w1"]) for r in a}
    for r in b:
        assert float(r["w1"]) == pytest.approx(wa[(r["index"], r["eps"])], rel=1e-5, abs=1e-9)


def test_progress_bar_counts_attack_iterations(checkpoint, tmp_path, capsys):
    """Two batches of 3 iterations: the bar moves per iteration and reaches 6 even if a batch stops early."""
    args = ["attack", checkpoint, "--out", str(tmp_path), "--method", "flow", "--eps", "1e-4,0.5"]
    assert main([*args, "--steps", "3", "--device", "cpu", "--batch", "2", "--max", "4"]) == 0
    err = capsys.readouterr().err
    renders = [part for part in re.split(r"[\r\n]", err) if part.strip()]
    for label in ("flow eps=0.0001", "flow eps=0.5"):
        bar = [r for r in renders if label in r]  # every redraw of this budget's bar, in order
        assert bar, err
        assert "6/6 [" in bar[-1] and "iter/s" in bar[-1], bar[-1]  # its final state: all 6 iterations


def test_other_settings_in_the_same_folder_are_refused(checkpoint, tmp_path, capsys):
    assert run_attack(checkpoint, tmp_path, "--method", "flow", "--eps", "0.1", "--max", "2") == 0
    capsys.readouterr()
    assert run_attack(checkpoint, tmp_path, "--method", "sinkhorn", "--eps", "0.1", "--max", "2") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different settings" in err[0] and "method" in err[0]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--method", "flow", "--eps", "0.1,-1"], "--eps must list positive finite"),
        (["--method", "flow", "--eps", "a,b"], "malformed --eps"),
        (["--method", "pgd", "--eps", "0.1"], "unknown method"),
        (["--method", "flow", "--eps", "0.1", "--smoothing", "wasserstein"], "--smoothing needs --sigma"),
        (["--method", "flow", "--eps", "0.1", "--sigma", "0.1"], "--sigma needs --smoothing"),
        (["--method", "flow", "--eps", "0.1", "--preset", "mnist"], "--preset applies to --method sinkhorn"),
        (["--method", "flow", "--eps", "0.1", "--indices", "0:9999999"], None),
    ],
)
def test_bad_input_is_one_line_and_exit_2(checkpoint, tmp_path, capsys, extra, message):
    code = run_attack(checkpoint, tmp_path / "o", *extra, "--max", "1")
    err = capsys.readouterr().err.strip().splitlines()
    if message is None:  # a slice past the end is simply the whole split, as in `certify`
        assert code == 0
        return
    assert code == 2 and len(err) == 1 and err[0].startswith("wbench attack: error:") and message in err[0]


def test_certified_curve_from_a_certify_folder_of_the_same_model(checkpoint, tmp_path, capsys):
    cert = tmp_path / "cert"
    certify = ["certify", checkpoint, "--out", str(cert), "--n0", "20", "--n", "200", "--batch", "100"]
    assert main([*certify, "--device", "cpu", "--no-progress", "--max", "3"]) == 0
    out = tmp_path / "atk"
    args = ["--method", "flow", "--eps", "0.01,0.1", "--max", "3", "--certify-dir", str(cert)]
    assert run_attack(checkpoint, out, *args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["certified"]["images"] == 3 and len(summary["certified"]["certified_accuracy_at_eps"]) == 2
    capsys.readouterr()
    assert run_attack(checkpoint, tmp_path / "l2", *args, "--ground", "l2") == 2
    assert "l1 ground" in capsys.readouterr().err


def test_smoothed_attack_records_predict_decisions_and_is_reproducible(checkpoint, tmp_path):
    args = ["--method", "flow", "--eps", "0.1", "--max", "3", "--smoothing", "wasserstein", "--sigma", "0.02"]
    args += ["--num-samples", "200", "--noise-samples", "4", "--alpha", "0.1"]
    assert run_attack(checkpoint, tmp_path / "a", *args) == 0
    assert run_attack(checkpoint, tmp_path / "b", *args, "--batch", "1") == 0
    a, b = read_csv_rows(tmp_path / "a" / "attack.csv"), read_csv_rows(tmp_path / "b" / "attack.csv")
    assert key_fields(a) == key_fields(b)  # PREDICT reads each image's own noise, whatever the batch
    for r in a:
        assert int(r["abstain"]) == (int(r["prediction"]) == -1)
        assert not (int(r["success"]) and int(r["abstain"]))
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["settings"]["smoothing"] == "wasserstein" and summary["settings"]["predict_n"] == 200


@pytest.fixture(scope="module")
def mnist5k_checkpoint(tmp_path_factory):
    """The levine_mnist5k network trained briefly (1 epoch on 512 images): a real 28x28 checkpoint."""
    cfg = TrainConfig.from_preset(
        "levine_mnist5k", noise="none", sigma=None, epochs=1, limit_train=512, limit_test=50, device="cpu",
        out_dir=str(tmp_path_factory.mktemp("m5k")),
    )  # fmt: skip
    return train(cfg, progress=False)["checkpoint"]


def test_attack_command_on_mnist5k(mnist5k_checkpoint, tmp_path):
    """`python -m wbench attack` as a user runs it, on the checkpoint's own data set (real MNIST digits)."""
    out, eps = tmp_path / "atk", (0.02, 0.1)
    cmd = [sys.executable, "-m", "wbench", "attack", mnist5k_checkpoint, "--method", "flow",
           "--eps", ",".join(map(str, eps)), "--out", str(out), "--max-images", "4", "--steps", "5",
           "--device", "cpu", "--no-progress"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = read_csv_rows(out / "attack.csv")
    assert sorted((int(r["index"]), float(r["eps"])) for r in rows) == [(i, e) for i in range(4) for e in eps]
    assert all(0 <= float(r["w1"]) <= float(r["eps"]) * (1 + 1e-6) for r in rows)
    summary = json.loads(out.joinpath("summary.json").read_text())
    assert summary["source"]["dataset"] == "mnist5k" and summary["images"] == 4
    assert [p["eps"] for p in summary["per_eps"]] == list(eps)
    assert summary["mean_image_mass"] > 50  # 28x28 MNIST digits carry ~100 pixel-mass units, 8x8 ones ~20
    assert (out / "robust_accuracy.png").read_bytes()[:8] == PNG
    assert (out / "examples.png").read_bytes()[:8] == PNG
