"""`wbench attack` folders edited or damaged by hand: one stderr line and exit code 2."""

from __future__ import annotations

import json

import pytest

from wbench.cli import main

ARGS = ["--method", "flow", "--eps", "0.01,0.05", "--max", "3", "--steps", "2", "--device", "cpu",
        "--no-progress", "--batch", "4"]  # fmt: skip


@pytest.fixture(scope="module")
def done(checkpoint, tmp_path_factory):
    """A finished attack folder to copy and damage."""
    out = tmp_path_factory.mktemp("done")
    assert main(["attack", checkpoint, "--out", str(out), *ARGS]) == 0
    return out


def rerun(checkpoint, done, tmp_path, edit):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(done, out)
    csv_path = out / "attack.csv"
    lines = csv_path.read_text().splitlines(keepends=True)
    csv_path.write_text("".join(edit(lines)))
    return out, main(["attack", checkpoint, "--out", str(out), *ARGS])


def set_field(line: str, name: str, value: str) -> str:
    fields = ["index", "eps", "label", "prediction", "success", "abstain", "w1", "shrunk", "seconds"]
    cells = line.rstrip("\n").split(",")
    cells[fields.index(name)] = value
    return ",".join(cells) + "\n"


def flip_outside_ball(lines):
    """Line 2 claims a flip (prediction off the label, success 1) at W1 = 10 eps."""
    row = lines[1].split(",")
    label = int(row[2])
    line = set_field(lines[1], "prediction", str((label + 1) % 10))
    line = set_field(line, "success", "1")
    return [lines[0], set_field(line, "w1", repr(10 * float(row[1]))), *lines[2:]]


EDITS = {
    "w1 nan": lambda ls: [ls[0], set_field(ls[1], "w1", "nan"), *ls[2:]],
    "w1 negative": lambda ls: [ls[0], set_field(ls[1], "w1", "-1.0"), *ls[2:]],
    "eps inf": lambda ls: [*ls, set_field(ls[1], "eps", "inf")],
    "index not a number": lambda ls: [ls[0], set_field(ls[1], "index", "abc"), *ls[2:]],
    "success outside the W1 ball": flip_outside_ball,
    "success with the label predicted": lambda ls: [
        ls[0],
        set_field(set_field(ls[1], "prediction", ls[1].split(",")[2]), "success", "1"),
        *ls[2:],
    ],
    "conflicting duplicate": lambda ls: [*ls, set_field(ls[1], "shrunk", str(1 - int(ls[1].split(",")[7])))],
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_garbled_rows_are_refused_naming_file_and_line(checkpoint, done, tmp_path, capsys, edit):
    out, rc = rerun(checkpoint, done, tmp_path, EDITS[edit])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "attack.csv line" in err[0]


def test_exact_duplicate_row_is_counted_once(checkpoint, done, tmp_path):
    out, rc = rerun(checkpoint, done, tmp_path, lambda ls: [*ls, ls[1]])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [p["images"] for p in summary["per_eps"]] == [3, 3]
    reference = json.loads((done / "summary.json").read_text())
    assert [p["robust_accuracy"] for p in summary["per_eps"]] == [
        p["robust_accuracy"] for p in reference["per_eps"]
    ]


@pytest.mark.parametrize("damage", ["truncated", "deleted"])
def test_settings_record_damaged_with_rows_present_is_refused(checkpoint, done, tmp_path, capsys, damage):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(done, out)
    if damage == "truncated":
        (out / "run.json").write_text((out / "run.json").read_text()[:20])
    else:
        (out / "run.json").unlink()
    assert main(["attack", checkpoint, "--out", str(out), *ARGS, "--seed", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run.json" in err[0]


def test_reproduce_attack_given_twice_takes_both_lists(tmp_path, capsys):
    """``--attack bogus --attack flow`` must not drop the first list (argparse keeps the last by default)."""
    argv = ["reproduce", "--out", str(tmp_path), "--attack", "bogus", "--attack", "flow"]
    argv += ["--attack-steps", "0"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'bogus'" in err[0]


def test_a_wrong_prediction_outside_the_w1_ball_leaves_the_image_robust():
    """An attack point beyond the budget (exact W1 > eps) proves nothing: the image counts as robust."""
    from wbench.dataset_attack import summarize

    def row(index, prediction, w1):
        success = int(prediction not in (3, -1) and w1 <= 0.1)
        return {"index": str(index), "eps": "0.1", "label": "3", "prediction": str(prediction),
                "success": str(success), "abstain": str(int(prediction == -1)), "w1": repr(w1),
                "shrunk": "1", "seconds": "0.5"}  # fmt: skip

    rows = [row(0, 5, 0.2), row(1, -1, 0.2), row(2, 5, 0.1), row(3, 3, 0.05)]
    (stats,) = summarize(rows, [0.1])
    assert stats["robust_accuracy"] == 0.75 and stats["successes"] == 1 and stats["abstentions"] == 0


def test_unknown_preset_is_refused_before_the_folder_records_it(checkpoint, tmp_path, capsys):
    """A typo in --preset must not record its settings in run.json and so lock the folder against the fix."""
    sinkhorn = ["--method", "sinkhorn", "--eps", "0.01", "--max", "2", "--steps", "2", "--device", "cpu",
                "--no-progress"]  # fmt: skip
    assert main(["attack", checkpoint, "--out", str(tmp_path), *sinkhorn, "--preset", "bogus"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'bogus'" in err[0]
    assert not (tmp_path / "run.json").exists()
    assert main(["attack", checkpoint, "--out", str(tmp_path), *sinkhorn, "--preset", "mnist"]) == 0
