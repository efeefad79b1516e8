"""Output folders stay consistent across duplicates, lost records, torn writes, kills (issue 9, items 2-7)."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from wbench.cli import main
from wbench.dataset_certification import CertifySettings, read_certify_rows, write_summary
from wbench.runio import (
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    locked_output,
    read_csv_rows,
)

CERTIFY = ["--n0", "8", "--n", "32", "--batch", "40", "--device", "cpu", "--no-progress"]
TRAIN = ["train", "--preset", "digits_quick", "--epochs", "1", "--limit-train", "64", "--limit-test", "32",
         "--device", "cpu", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def certified(checkpoint, tmp_path_factory):
    """A reference folder with images 0, 1, 2 certified."""
    out = tmp_path_factory.mktemp("ref")
    assert main(["certify", checkpoint, "--out", str(out), "--indices", "0:3", *CERTIFY]) == 0
    return out


def copy_of(folder, dest):
    dest.mkdir()
    for name in ("run.json", "certify.csv"):
        (dest / name).write_bytes((folder / name).read_bytes())
    return dest


def summary(out):
    return json.loads((out / "summary.json").read_text())


# item 2 -----------------------------------------------------------------------------------


def test_a_duplicated_row_is_counted_once_and_reported(checkpoint, certified, tmp_path, capsys):
    out = copy_of(certified, tmp_path / "dup")
    lines = (out / "certify.csv").read_text().splitlines(keepends=True)
    (out / "certify.csv").write_text("".join([*lines, lines[1]]))  # image 0 appended twice
    with pytest.warns(UserWarning, match=r"certify\.csv.*duplicate.*index 0"):
        rows = read_certify_rows(out)
    assert sorted(int(r["index"]) for r in rows) == [0, 1, 2]
    capsys.readouterr()
    assert main(["certify", checkpoint, "--out", str(out), "--indices", "0:3", *CERTIFY]) == 0
    captured = capsys.readouterr()
    assert summary(out)["images"] == 3 and "certified 3 images" in captured.out
    assert "duplicate" in captured.err and "Traceback" not in captured.err


def test_conflicting_rows_for_one_index_are_refused(certified, tmp_path):
    out = copy_of(certified, tmp_path / "conflict")
    lines = (out / "certify.csv").read_text().splitlines(keepends=True)
    fields = lines[1].split(",")
    fields[2] = str((int(fields[2]) + 1) % 10)  # another prediction for image 0
    (out / "certify.csv").write_text("".join([*lines, ",".join(fields)]))
    with pytest.raises(ValueError, match=r"certify\.csv.*lines 2 and 5.*index 0"):
        read_certify_rows(out)


# item 3 -----------------------------------------------------------------------------------


def test_rows_without_their_settings_record_are_refused(checkpoint, certified, tmp_path, capsys):
    out = copy_of(certified, tmp_path / "norun")
    (out / "run.json").unlink()
    before = (out / "certify.csv").read_bytes()
    assert main(["certify", checkpoint, "--out", str(out), "--sigma", "0.05", *CERTIFY]) == 2
    err = capsys.readouterr().err
    assert "run.json" in err and "certify.csv" in err and "another --out" in err
    assert (out / "certify.csv").read_bytes() == before and not (out / "run.json").exists()


# item 4 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("torn", ["", "index,lab", "index,label,prediction,p_lower,radius,correct,seconds\r"])
def test_a_torn_header_is_recovered(checkpoint, certified, tmp_path, torn):
    out = copy_of(certified, tmp_path / "torn")
    (out / "certify.csv").write_text(torn, newline="")  # killed during the first write
    assert main(["certify", checkpoint, "--out", str(out), "--indices", "0:3", *CERTIFY]) == 0
    ref = [{k: v for k, v in r.items() if k != "seconds"} for r in read_csv_rows(certified / "certify.csv")]
    got = [{k: v for k, v in r.items() if k != "seconds"} for r in read_csv_rows(out / "certify.csv")]
    assert got == ref


# item 5 -----------------------------------------------------------------------------------


def test_resume_rewrites_stale_metrics_from_the_checkpoint(tmp_path):
    out = tmp_path / "train"
    assert main([*TRAIN, "--out", str(out)]) == 0
    fresh = json.loads((out / "metrics.json").read_text())
    # a kill between the checkpoint replace and the metrics replace leaves the old metrics
    atomic_write_json(out / "metrics.json", {**fresh, "epochs_completed": 0, "metrics": []})
    assert main([*TRAIN, "--out", str(out), "--resume"]) == 0  # nothing left to train
    assert json.loads((out / "metrics.json").read_text()) == fresh
    (out / "metrics.json").unlink()
    assert main([*TRAIN, "--out", str(out), "--resume"]) == 0
    assert json.loads((out / "metrics.json").read_text()) == fresh


# item 6 -----------------------------------------------------------------------------------


def test_stale_temporary_files_are_removed_by_the_next_run(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    stale = [".checkpoint.pt.k2j4_x9a.tmp", ".summary.json.abcdefgh.tmp", ".certify.csv.12345678.tmp"]
    kept = [".hidden", "notes.tmp", ".x.tmp", "data.csv"]  # not the pattern of our temporary files
    for name in stale + kept:
        (out / name).write_bytes(b"partial")
    with locked_output(out):
        pass
    assert sorted(p.name for p in out.iterdir() if p.name != ".wbench.lock") == sorted(kept)


# item 7 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_atomic_writes_honour_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        atomic_write_json(tmp_path / "b.json", {"x": 1})
        atomic_torch_save({"x": torch.zeros(1)}, tmp_path / "c.pt")
        with open(tmp_path / "plain", "w"):
            pass
    finally:
        os.umask(old)
    expected = 0o666 & ~mask
    assert stat.S_IMODE((tmp_path / "plain").stat().st_mode) == expected
    for name in ("a.bin", "b.json", "c.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expected, name


def test_summary_of_a_folder_with_duplicates_counts_each_image_once(certified, tmp_path):
    out = copy_of(certified, tmp_path / "dup2")
    lines = (out / "certify.csv").read_text().splitlines(keepends=True)
    (out / "certify.csv").write_text("".join([*lines, *lines[1:]]))  # every row twice
    settings = CertifySettings(sigma=0.02, n0=8, n=32, batch_size=40)
    with pytest.warns(UserWarning, match="duplicate"):
        s = write_summary(out, settings)
    assert s["images"] == 3
