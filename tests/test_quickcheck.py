"""wbench.quickcheck and ``wbench verify``: rows come from real results and a broken solver fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from wbench.cli import main
from wbench.quickcheck import COLUMNS, format_table, run_quick_verification
from wbench.transport import distance

EXPECTED_CLAIMS = {
    "Lemma 1: Ling-Okada LP (Eq. 23) = W1 (POT)",
    "Lemma 1: network min-cost flow = W1 (POT)",
    "Lemma 1: min||delta||_1 (Eq. 22 LP) = W1 (POT)",
    "Lemma 1: optimal_flow_plan reproduces x'",
    "Lemma 1: ||optimal_flow_plan||_1 = W1 (POT)",
    "Lemma 1: one-hot W1 (L1) = mass x Manhattan distance",
    "Cor. 1: ||x - x'||_1 <= 2 W1 (L1 ground)",
    "Cor. 1: ||x - x'||_1 <= 2 W1 (L2 ground)",
    "Cor. 1: equality on the half-mass shift",
    "Cor. 2: colour W1 = sum of channel W1s",
    "Cor. 2: colour W1 (L1) = min flow-plan norm (Eq. 69)",
    "Cor. 3: W1(L1 ground) <= sqrt(2) W1(L2 ground)",
    "Cor. 3: equality on a one-pixel diagonal move",
}


def test_quick_verification_passes_with_real_errors():
    rows = run_quick_verification(seed=1)
    assert {r["claim"] for r in rows} == EXPECTED_CLAIMS
    for r in rows:
        assert set(r) == set(COLUMNS)
        assert r["status"] == "PASS", r
        assert 0.0 <= r["worst_error"] <= r["tolerance"]
        assert r["cases"] >= 1
    lemma = {r["claim"]: r for r in rows}["Lemma 1: Ling-Okada LP (Eq. 23) = W1 (POT)"]
    assert lemma["cases"] == 7 and lemma["tolerance"] > 0


def test_quick_verification_fails_on_a_solver_off_by_1e4(monkeypatch):
    real = distance.network_w1_plane
    monkeypatch.setattr(distance, "network_w1_plane", lambda x, y: real(x, y) * (1 + 1e-4))
    rows = {r["claim"]: r for r in run_quick_verification(seed=1)}
    broken = rows["Lemma 1: network min-cost flow = W1 (POT)"]
    assert broken["status"] == "FAIL" and broken["worst_error"] > broken["tolerance"]
    assert rows["Cor. 2: colour W1 (L1) = min flow-plan norm (Eq. 69)"]["status"] == "FAIL"
    assert rows["Lemma 1: Ling-Okada LP (Eq. 23) = W1 (POT)"]["status"] == "PASS"


ROWS = [
    {"claim": "Lemma 1: a", "cases": 3, "worst_error": 1e-14, "tolerance": 1e-9, "status": "PASS"},
    {"claim": "Cor. 1: b", "cases": 1, "worst_error": 0.0, "tolerance": 1e-12, "status": "PASS"},
]


def test_format_table_text_and_markdown():
    text = format_table(ROWS).splitlines()
    assert text[0].split() == ["claim", "cases", "worst", "error", "tolerance", "status"]
    assert text[2].startswith("Lemma 1: a") and text[2].endswith("PASS") and "1.000e-14" in text[2]
    md = format_table(ROWS, markdown=True).splitlines()
    assert md[0] == "| claim | cases | worst error | tolerance | status |"
    assert md[2] == "| Lemma 1: a | 3 | 1.000e-14 | 1.000e-09 | PASS |"
    assert len(md) == 2 + len(ROWS)


@pytest.mark.parametrize(("status", "code"), [("PASS", 0), ("FAIL", 1)])
def test_cli_verify_writes_files_and_exit_code(monkeypatch, tmp_path, capsys, status, code):
    rows = [dict(ROWS[0]), dict(ROWS[1], status=status)]
    seen = {}

    def fake(seed):
        seen["seed"] = seed
        return rows

    monkeypatch.setattr("wbench.quickcheck.run_quick_verification", fake)
    out_json, out_md = tmp_path / "v.json", tmp_path / "v.md"
    assert main(["verify", "--seed", "7", "--json", str(out_json), "--markdown", str(out_md)]) == code
    assert seen["seed"] == 7
    printed = capsys.readouterr().out
    assert "Lemma 1: a" in printed and ("FAILED: 1 claim(s): Cor. 1: b" in printed) == (status == "FAIL")
    saved = json.loads(out_json.read_text())
    assert saved["seed"] == 7 and saved["rows"] == rows and "versions" in saved["environment"]
    assert out_md.read_text() == format_table(rows, markdown=True) + "\n"


def test_verify_prints_no_solver_banner_on_stdout():
    """HiGHS announces itself on the C-level stdout the first time it runs; the table comes first."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-m", "wbench", "verify"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].split() == ["claim", "cases", "worst", "error", "tolerance", "status"]
    assert "HiGHS" not in proc.stdout


def test_rows_with_non_finite_errors_are_written_as_strict_json(tmp_path):
    from wbench.quickcheck import rows_for_json
    from wbench.runio import atomic_write_json

    rows = [{"claim": "a", "cases": 1, "worst_error": float("inf"), "tolerance": 1e-9, "status": "FAIL"}]
    with pytest.raises(ValueError, match="not finite"):
        atomic_write_json(tmp_path / "raw.json", rows)
    atomic_write_json(tmp_path / "v.json", rows_for_json(rows))
    stored = json.loads((tmp_path / "v.json").read_text())
    assert stored[0]["worst_error"] is None and stored[0]["status"] == "FAIL"
    assert "n/a" in format_table(stored)
