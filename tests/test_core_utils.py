"""Lead-owned utilities: options, devices, run I/O, mass-space noise."""

from __future__ import annotations

import json

import pytest
import torch

from wbench.devices import resolve_device
from wbench.noise import check_mass_images, perturb
from wbench.options import Ground, Noise, parse_option
from wbench.runio import (
    CsvAppender,
    atomic_torch_save,
    atomic_write_json,
    environment_record,
    load_checkpoint,
    read_csv_rows,
)


def test_parse_option_accepts_strings_and_members():
    assert parse_option(Ground, "L1", "ground") is Ground.L1
    assert parse_option(Ground, Ground.L2, "ground") is Ground.L2
    with pytest.raises(ValueError, match="unknown ground 'l3'.*'l1', 'l2'"):
        parse_option(Ground, "l3", "ground")
    with pytest.raises(ValueError, match="unknown noise"):
        parse_option(Noise, 3, "noise")


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None).type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_atomic_json_and_checkpoint_roundtrip(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}
    ckpt = {"state_dict": {"w": torch.arange(3.0)}, "epoch": 2, "environment": environment_record()}
    atomic_torch_save(ckpt, tmp_path / "c.pt")
    loaded = load_checkpoint(tmp_path / "c.pt")
    assert loaded["epoch"] == 2 and torch.equal(loaded["state_dict"]["w"], torch.arange(3.0))
    assert not list(tmp_path.glob(".*.tmp")), "temporary files must not be left behind"
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


class NotAllowed:
    """An arbitrary class: unpickling it must be refused."""


def test_checkpoint_rejects_pickled_code(tmp_path):
    torch.save({"obj": NotAllowed()}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match="[Ww]eights only"):
        load_checkpoint(tmp_path / "evil.pt")


def test_csv_appender_resumes_and_drops_torn_line(tmp_path):
    path = tmp_path / "rows.csv"
    with CsvAppender(path, ["i", "v"]) as out:
        out.append({"i": 0, "v": "a"})
        out.append({"i": 1, "v": "b"})
    with open(path, "a") as fh:  # a crash mid-row
        fh.write("2,c-half")
    assert [r["i"] for r in read_csv_rows(path)] == ["0", "1"]
    with CsvAppender(path, ["i", "v"]) as out:
        out.append({"i": 2, "v": "c"})
    assert [(r["i"], r["v"]) for r in read_csv_rows(path)] == [("0", "a"), ("1", "b"), ("2", "c")]
    with pytest.raises(ValueError, match="has columns"):
        CsvAppender(path, ["i", "other"])


@pytest.mark.parametrize("noise", ["wasserstein", "laplace"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_perturb_preserves_mass_and_draws_per_image(noise, dtype, tol):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 6, 5, generator=g, dtype=dtype)
    x[1] *= 7.0  # different masses per image
    y = perturb(x, 0.05, noise, seed=0, index=0)
    mass = x.sum((1, 2, 3))
    if noise == "wasserstein":  # flow noise conserves mass per image and per channel
        torch.testing.assert_close(y.sum((2, 3)), x.sum((2, 3)), rtol=tol, atol=tol * 10)
    d = (y - x) / mass.view(-1, 1, 1, 1)
    assert not torch.allclose(d[0], d[2]), "each image must get its own draw by default"
    shared = perturb(x, 0.05, noise, seed=0, index=1, shared_across_batch=True)
    ds = (shared - x) / mass.view(-1, 1, 1, 1)
    torch.testing.assert_close(ds[0], ds[2], rtol=tol, atol=tol)


def test_perturb_is_seeded():
    x = torch.rand(2, 1, 5, 5)
    a = perturb(x, 0.1, seed=3, index=7)
    assert torch.equal(a, perturb(x, 0.1, seed=3, index=7))
    assert not torch.equal(a, perturb(x, 0.1, seed=3, index=8))  # the next training step
    assert not torch.equal(a, perturb(x, 0.1, seed=4, index=7))
    # a rank that starts at copy 2 draws what rows 2, 3 of a larger batch draw: ranks never repeat
    big = torch.cat((x, x))
    rank_1 = perturb(x, 0.1, seed=3, index=7, first_copy=2)
    torch.testing.assert_close(rank_1, perturb(big, 0.1, seed=3, index=7)[2:], rtol=0, atol=0)


def test_perturb_rejects_bad_input():
    x = torch.rand(2, 1, 4, 4)
    with pytest.raises(ValueError, match="NaN or inf"):
        perturb(torch.full_like(x, float("nan")), 0.1, seed=0, index=0)
    with pytest.raises(ValueError, match="negative mass"):
        perturb(x - 1.0, 0.1, seed=0, index=0)
    with pytest.raises(ValueError, match="zero total mass"):
        check_mass_images(torch.zeros(1, 1, 3, 3))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        perturb(x[0], 0.1, seed=0, index=0)
    with pytest.raises(ValueError, match="sigma must be"):
        perturb(x, -1.0, seed=0, index=0)
    with pytest.raises(ValueError, match="unknown noise"):
        perturb(x, 0.1, "gaussian", seed=0, index=0)
    with pytest.raises(ValueError, match="index"):
        perturb(x, 0.1, seed=0, index=-1)
    with pytest.raises(ValueError, match="overflows"):
        perturb(x, 1e38, seed=0, index=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_perturb_laplace_noise_has_std_sigma_in_normalised_mass(dtype):
    # float32 and float64 draw the same unit variables; each has the Laplace law
    g = torch.Generator().manual_seed(5)
    x = torch.rand(64, 1, 16, 16, generator=g, dtype=dtype)
    x[::2] *= 3.0
    d = (perturb(x, 0.05, "laplace", seed=5, index=0) - x) / x.sum((1, 2, 3), keepdim=True)
    assert abs(float(d.std()) - 0.05) < 0.05 * 0.08  # 16384 draws: the std's standard error is ~1.7%


def test_perturb_keeps_the_graph_for_inputs_that_require_grad():
    x = torch.rand(3, 1, 5, 5, requires_grad=True)
    y = perturb(x, 0.1, seed=0, index=0)
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.ones_like(x))
