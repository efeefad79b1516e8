"""Strict JSON, validated radius grids and index ranges, the sample-count cap (issue 9, items 15-16)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from wbench.certification import certified_radius
from wbench.cli import main
from wbench.dataset_certification import (
    CSV_FIELDS,
    CertifySettings,
    default_radius_grid,
    max_radius,
    parse_indices,
    write_summary,
)
from wbench.runio import CsvAppender, atomic_write_json

CERTIFY = ["--n0", "8", "--n", "32", "--batch", "40", "--device", "cpu", "--no-progress"]


def strict_load(path):
    def refuse(token):
        raise AssertionError(f"{path} holds the non-JSON token {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


# item 15 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, np.float32("nan")])
def test_json_writes_are_strict_and_name_the_key(tmp_path, value):
    with pytest.raises(ValueError, match=r"bad\.json.*\['runs'\]\[1\]\['x'\]"):
        atomic_write_json(tmp_path / "bad.json", {"runs": [{"x": 1.0}, {"x": value}]})
    assert not (tmp_path / "bad.json").exists()


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--radii=-1,0,0.01"], "radii"),
        (["--radii=0,nan"], "radii"),
        (["--radii=0,inf"], "radii"),
        (["--radii=,"], "radii"),
        (["--max", "0"], "--max-images must be >= 1"),
        (["--indices", "5:2"], "selects no images"),
        (["--indices", "0:10", "--skip", "20", "--max-images", "0"], "--max-images must be >= 1"),
        (["--indices", ","], "selects no images"),
    ],
)
def test_certify_refuses_grids_and_ranges_with_no_value(checkpoint, tmp_path, capsys, extra, match):
    assert main(["certify", checkpoint, "--out", str(tmp_path / "o"), *CERTIFY, *extra]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1
    assert not (tmp_path / "o" / "summary.json").exists()


@pytest.mark.parametrize("extra", [["--max", "0"], ["--radii=0,-0.5"], ["--radii=nan"]])
def test_reproduce_refuses_them_too(tmp_path, capsys, extra):
    assert main(["reproduce", "--out", str(tmp_path / "o"), "--sigmas", "0.02", "--no-progress", *extra]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_parse_indices_refuses_empty_selections():
    with pytest.raises(ValueError, match="selects no images"):
        parse_indices("5:2", 10)
    with pytest.raises(ValueError, match="--max-images must be >= 1"):
        parse_indices(None, 10, max_count=0)
    assert parse_indices("2:9:3", 10, max_count=2) == [2, 5]


def test_a_summary_without_images_has_nulls_not_nan(checkpoint, tmp_path):
    out = tmp_path / "o"
    assert main(["certify", checkpoint, "--out", str(out), "--indices", "0:2", *CERTIFY]) == 0
    strict_load(out / "summary.json")
    settings = CertifySettings(sigma=0.02, n0=8, n=32, batch_size=40)
    s = write_summary(out, settings, indices=[999])  # an image the folder does not hold
    loaded = strict_load(out / "summary.json")
    assert loaded["images"] == 0 and s["images"] == 0
    assert loaded["clean_smoothed_accuracy"] is None and loaded["mean_certified_radius"] is None
    assert loaded["noise_samples_per_s"] is None
    assert set(loaded["certified_accuracy"]) == {None}


# item 16 ----------------------------------------------------------------------------------


def test_images_certified_at_the_cap_count_at_the_last_grid_point(tmp_path):
    settings = CertifySettings(sigma=0.01, n0=100, n=1000, alpha=0.05)
    cap = max_radius(settings)
    grid = default_radius_grid(settings)
    assert grid[0] == 0 and 0.99 * cap < grid[-1] < cap and np.all(np.diff(grid) > 0)
    # p_lower from the Clopper-Pearson bound differs from alpha**(1/n) in the last bits
    p = 0.05 ** (1 / 1000)
    at_cap = [certified_radius(np.nextafter(p, 0.0), 0.01), certified_radius(p, 0.01)]
    with CsvAppender(tmp_path / "certify.csv", CSV_FIELDS) as out:
        for i, r in enumerate([*at_cap, 0.0]):
            out.append({"index": i, "label": 1, "prediction": int(i < 2), "p_lower": p, "radius": repr(r),
                        "correct": int(i < 2), "seconds": 0.5})  # fmt: skip
    s = write_summary(tmp_path, settings)
    assert s["certified_accuracy"][-1] == pytest.approx(2 / 3, rel=0, abs=1e-15)
    assert s["max_certifiable_radius"] == cap
    assert strict_load(tmp_path / "summary.json")["max_certifiable_radius"] == cap


# smaller: p_lower errors print plain floats ------------------------------------------------


def test_p_lower_errors_print_plain_floats():
    with pytest.raises(ValueError) as info:
        certified_radius(np.array([0.2, 1.5]), 0.1)
    assert "np.float64" not in str(info.value) and "1.5" in str(info.value)
