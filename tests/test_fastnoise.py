"""The compiled CPU operator (wbench.fastnoise) against the portable reference, and how it is built."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from wbench import fastnoise
from wbench import noise_stream as ns
from wbench.noise import noisy_copies
from wbench.options import Noise

needs_op = pytest.mark.skipif(not fastnoise.available(), reason="compiled operator not buildable here")


def test_no_ctypes_process_maps_or_openmp_symbols_in_the_package():
    root = os.path.dirname(fastnoise.__file__)
    for folder, _dirs, files in os.walk(root):
        for name in files:
            if name.endswith((".py", ".cpp", ".c", ".h")):
                with open(os.path.join(folder, name), encoding="utf-8") as fh:
                    text = fh.read()
                for needle in ("ctypes", "/proc/self/maps", "GOMP_"):
                    assert needle not in text, f"{needle} in {name}"


@pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "c++")) is None or os.environ.get("WBENCH_FASTNOISE") == "0",
    reason="no C++ compiler, or the operator is disabled on purpose",
)
def test_operator_builds_where_a_compiler_exists():
    # a failed build only warns; this makes it visible where it should have succeeded
    assert fastnoise.available()


@needs_op
def test_words_match_the_reference_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    index = torch.cat((torch.tensor([0, 2**32 - 1]), torch.randint(0, 2**32, (30,), generator=g)))
    copy = torch.cat((torch.tensor([2**32 - 1, 0]), torch.randint(0, 2**32, (30,), generator=g)))
    for blocks in (1, 15, 16, 17, 385):  # the vector path takes 16 blocks at a time
        fast = fastnoise.load().stream_words(index, copy, 4242, int(ns.Tag.SMOOTHING), blocks)
        assert torch.equal(fast, ns.stream_words(index, copy, 4242, ns.Tag.SMOOTHING, blocks))


@needs_op
def test_laplace_transform_matches_the_reference_bit_for_bit():
    words = torch.cat(
        (
            torch.arange(0, 2**32, 997, dtype=torch.int64),
            torch.tensor([0, 2**23 - 1, 2**23, 2**31 - 1, 2**31, 2**32 - 1], dtype=torch.int64),
        )
    )
    fast = fastnoise.load().laplace_words(words)
    assert torch.equal(fast.view(torch.int32), ns.laplace_from_words(words).view(torch.int32))


@needs_op
@pytest.mark.parametrize("noise", [Noise.WASSERSTEIN, Noise.LAPLACE])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 5, 4), (3, 4, 3), (1, 1, 6), (1, 6, 1), (2, 28, 28), (1, 2, 2)])
def test_noisy_copies_match_the_portable_implementation_bit_for_bit(shape, dtype, noise):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.rand(5, *shape, generator=g, dtype=dtype)
    scale = torch.rand(5, generator=g, dtype=dtype) + 0.1
    kwargs = dict(seed=7, index=torch.arange(10, 15), copy=torch.arange(5) * 1000, tag=ns.Tag.TRAINING)
    fast = noisy_copies(x, scale, noise=noise, **kwargs)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fastnoise, "load", lambda: None)
        portable = noisy_copies(x, scale, noise=noise, **kwargs)
    assert torch.equal(fast, portable)
    if noise is Noise.WASSERSTEIN:  # Definition 3.1 / Corollary 2: each channel keeps its mass
        tol = {torch.float32: 1e-4, torch.float64: 1e-12}[dtype]
        torch.testing.assert_close(fast.sum((-2, -1)), x.sum((-2, -1)), rtol=0, atol=tol)


@needs_op
def test_copies_do_not_depend_on_threads():
    x = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    kwargs = dict(seed=1, index=torch.full((500,), 3), copy=torch.arange(500), tag=ns.Tag.SMOOTHING)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(noisy_copies(x, torch.tensor([0.5]), noise=Noise.WASSERSTEIN, **kwargs))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])


def test_loading_keeps_denormals():
    fastnoise.available()
    assert float(torch.tensor([1e-39]) * 1.0) != 0.0


_CHILD = textwrap.dedent(
    """
    import warnings, torch
    warnings.simplefilter("always")
    from wbench import fastnoise, noise_stream as ns
    from wbench.noise import noisy_copies
    from wbench.options import Noise
    x = torch.rand(1, 1, 6, 5, generator=torch.Generator().manual_seed(0))
    out = noisy_copies(x, torch.tensor([0.3]), seed=5, index=torch.full((4,), 2), copy=torch.arange(4),
                       tag=ns.Tag.SMOOTHING, noise=Noise.WASSERSTEIN)
    print(fastnoise.available(), ",".join(f"{v:.9g}" for v in out.flatten().tolist()))
    """
)


def _child(env_extra: dict[str, str], tmp) -> subprocess.Popen:
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp), **env_extra}
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_without_a_compiler_one_warning_and_the_same_noise(tmp_path):
    broken = _child({"CXX": str(tmp_path / "no-such-compiler")}, tmp_path / "ext")
    portable = _child({"WBENCH_FASTNOISE": "0"}, tmp_path / "ext0")
    out_b, err_b = broken.communicate(timeout=600)
    out_p, err_p = portable.communicate(timeout=600)
    assert broken.returncode == 0 and portable.returncode == 0, err_b + err_p
    assert out_b.startswith("False ") and out_p.startswith("False ")
    assert out_b.split()[1] == out_p.split()[1]
    assert err_b.count("could not be built") == 1
    assert "could not be built" not in err_p


@pytest.mark.slow
@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None, reason="no C++ compiler")
def test_concurrent_first_builds_share_one_cache(tmp_path):
    # two processes compile into the same empty extension folder at once: torch's lock file
    # lets one build while the other waits, and both use the result
    procs = [_child({}, tmp_path) for _ in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert out.startswith("True "), err
    assert outs[0][0] == outs[1][0]
    portable = _child({"WBENCH_FASTNOISE": "0"}, tmp_path / "none").communicate(timeout=600)[0]
    assert outs[0][0].split()[1] == portable.split()[1]
