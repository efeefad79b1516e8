"""`wbench certify`: CSV rows, resume after an interruption, summary JSON and PNG, setting mismatches."""

from __future__ import annotations

import json

import pytest

from wbench.cli import main
from wbench.runio import read_csv_rows

ARGS = ["--n0", "20", "--n", "200", "--batch", "64", "--device", "cpu", "--no-progress"]


def certify(checkpoint, out, *extra):
    return main(["certify", checkpoint, "--out", str(out), *ARGS, *extra])


def without_seconds(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def lines(path):
    return path.read_text().splitlines()


def test_certify_writes_rows_summary_and_plot(checkpoint, tmp_path):
    assert certify(checkpoint, tmp_path, "--max", "4", "--skip", "2") == 0
    rows = read_csv_rows(tmp_path / "certify.csv")
    assert [int(r["index"]) for r in rows] == [0, 2, 4, 6]
    assert set(rows[0]) == {"index", "label", "prediction", "p_lower", "radius", "correct", "seconds"}
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["images"] == 4
    assert len(summary["radii"]) == len(summary["certified_accuracy"])
    assert summary["settings"]["sigma"] == 0.02 and summary["seed"] == 0
    assert "versions" in summary["environment"]
    expected_clean = sum(int(r["correct"]) for r in rows) / 4
    assert summary["clean_smoothed_accuracy"] == pytest.approx(expected_clean)
    assert summary["certified_accuracy"][0] == pytest.approx(expected_clean)
    assert (tmp_path / "certified_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_after_half_and_after_a_torn_line(checkpoint, tmp_path):
    full, split, torn = tmp_path / "full", tmp_path / "split", tmp_path / "torn"
    assert certify(checkpoint, full, "--indices", "0:6") == 0
    assert certify(checkpoint, split, "--indices", "0:3") == 0
    first = lines(split / "certify.csv")
    assert certify(checkpoint, split, "--indices", "0:6") == 0
    resumed = lines(split / "certify.csv")
    assert resumed[: len(first)] == first  # finished rows are kept, not redone
    ref = without_seconds(read_csv_rows(full / "certify.csv"))
    assert without_seconds(read_csv_rows(split / "certify.csv")) == ref

    assert certify(checkpoint, torn, "--indices", "0:4") == 0
    text = (torn / "certify.csv").read_text()
    (torn / "certify.csv").write_text(text[: text.rstrip("\n").rfind("\n") + 1] + "3,3,3,0.")  # crash mid-row
    assert certify(checkpoint, torn, "--indices", "0:6") == 0
    got = read_csv_rows(torn / "certify.csv")
    assert without_seconds(got) == ref
    assert sorted(int(r["index"]) for r in got) == list(range(6))


def test_mismatched_settings_refuse_to_resume(checkpoint, tmp_path, capsys):
    assert certify(checkpoint, tmp_path, "--max", "2") == 0
    assert certify(checkpoint, tmp_path, "--max", "2", "--sigma", "0.05") == 2
    assert "different settings" in capsys.readouterr().err
    assert len(read_csv_rows(tmp_path / "certify.csv")) == 2


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--noise", "gauss"], "noise"),
        (["--ground", "linf"], "ground"),
        (["--indices", "0:x"], "index range"),
        (["--indices", "99999"], "out of range"),
        (["--sigma", "-1"], "sigma"),
        (["--split", "val"], "split"),
    ],
)
def test_bad_options_are_clean_errors(checkpoint, tmp_path, capsys, extra, match):
    assert certify(checkpoint, tmp_path, "--max", "1", *extra) == 2
    assert match in capsys.readouterr().err


def test_repeated_indices_and_smaller_reruns(checkpoint, tmp_path):
    assert certify(checkpoint, tmp_path, "--indices", "1,1,2") == 0
    assert [int(r["index"]) for r in read_csv_rows(tmp_path / "certify.csv")] == [1, 2]
    assert certify(checkpoint, tmp_path, "--indices", "2") == 0  # nothing new to certify
    assert len(read_csv_rows(tmp_path / "certify.csv")) == 2
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["images"] == 1  # only the image asked for, not every row of the folder


def test_authors_convention_reproduces_the_authors_radii_by_default(checkpoint, tmp_path):
    """Issue 9, item 17: their wass_smooth_certify divides the L1-ground radius by sqrt 2 (L2 ground)."""
    import math

    assert certify(checkpoint, tmp_path, "--max", "3", "--convention", "authors") == 0
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["settings"]["ground"] == "l2" and run["settings"]["convention"] == "authors"
    rows = read_csv_rows(tmp_path / "certify.csv")
    assert any(float(r["p_lower"]) > 0.5 for r in rows)
    for r in rows:
        p = float(r["p_lower"])
        authors = max((math.log(p) - math.log1p(-p)) * 0.02 / 2**1.5, 0.0) / 2**0.5 if p > 0 else 0.0
        assert float(r["radius"]) == pytest.approx(authors, rel=1e-12, abs=0)
    explicit = tmp_path / "explicit"
    assert certify(checkpoint, explicit, "--max", "3", "--convention", "authors", "--ground", "l1") == 0
    assert json.loads((explicit / "run.json").read_text())["settings"]["ground"] == "l1"
