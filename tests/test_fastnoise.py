"""The compiled noise kernel (wbench.fastnoise): Philox known answers, noisy copies against the definition."""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy import stats

from wbench import fastnoise
from wbench.flow import apply_flow_unchecked, laplace_from_words

pytestmark = pytest.mark.skipif(not fastnoise.available(), reason="compiled kernel not built")

# Random123's tests/kat_vectors, "philox4x32 10" lines: counter words, key words, output words
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.skipif(
    not (sys.platform.startswith("linux") and platform.machine() == "x86_64"), reason="built on Linux x86-64"
)
def test_kernel_is_built_where_it_should_be():
    # a failed build only warns at install time; this makes it visible (unless disabled on purpose)
    assert fastnoise.available() or os.environ.get("WBENCH_FASTNOISE") == "0"


@pytest.mark.parametrize(("counter", "key", "expected"), KAT)
def test_philox_known_answers(counter, key, expected):
    assert tuple(int(w) for w in fastnoise.philox4x32_10(key, counter, 1)) == expected


def test_philox_counter_carries_into_the_second_word():
    words = fastnoise.philox4x32_10((5, 6), (0xFFFFFFFF, 7, 1, 2), 2)
    np.testing.assert_array_equal(words[4:], fastnoise.philox4x32_10((5, 6), (0, 8, 1, 2), 1))


@pytest.mark.parametrize("blocks", [1, 15, 16, 17, 48, 385, 1001])
def test_vectorised_image_words_match_the_portable_loop(blocks):
    rng = np.random.default_rng(blocks)
    key = tuple(int(k) for k in rng.integers(0, 2**32, 2))
    image = int(rng.integers(0, 2**63))
    simd = fastnoise.image_words(key, image, blocks, simd=True)
    np.testing.assert_array_equal(simd, fastnoise.image_words(key, image, blocks, simd=False))
    counter = (0, 0, image & 0xFFFFFFFF, image >> 32)
    np.testing.assert_array_equal(simd, fastnoise.philox4x32_10(key, counter, blocks))


def reference_copies(x, scale, key, first_image, n, flow):
    """The definition, in float64 from the kernel's words: x + s div(L) (flow) or x + s L (pixel)."""
    c, h, w = x.shape[1:]
    n_v = c * (h - 1) * w
    per_image = n_v + c * h * w if flow else c * h * w
    rows = []
    for g in range(n):
        words = fastnoise.image_words(key, first_image + g, (per_image + 3) // 4)[:per_image]
        lap = laplace_from_words(torch.from_numpy(words.view(np.int32).copy()), 1.0).double()
        xg = x[g if x.shape[0] > 1 else 0].double()
        s = float(scale[g if scale.shape[0] > 1 else 0])
        if flow:
            v = lap[:n_v].view(c, h - 1, w)
            hz = lap[n_v:].view(c, h, w)[..., : w - 1]  # the last column is drawn, not used
            rows.append(apply_flow_unchecked(xg, s * v, s * hz))
        else:
            rows.append(xg + s * lap.view(c, h, w))
    return torch.stack(rows)


SHAPES = [(1, 5, 4), (3, 4, 3), (1, 1, 6), (1, 6, 1), (2, 28, 28), (1, 2, 2), (3, 7, 9)]


@pytest.mark.parametrize("flow", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_noisy_copies_follow_the_definition(shape, flow):
    n = 37
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.rand(1, *shape, generator=g)
    scale = torch.tensor([0.3])
    key = fastnoise.random_key(g)
    out = fastnoise.noisy_copies(x, scale, torch.empty(n, *shape), key=key, first_image=5, flow=flow)
    ref = reference_copies(x, scale, key, 5, n, flow)
    # float32 rounding of log and of four additions of draws up to 16.6 s in size
    torch.testing.assert_close(out.double(), ref, rtol=1e-6, atol=4e-6 * 0.3 * 17)
    if flow:  # Definition 3.1 / Corollary 2: each channel keeps its mass
        torch.testing.assert_close(
            out.double().sum((-2, -1)), x.double().sum((-2, -1)).expand(n, -1), rtol=0, atol=1e-4
        )


def test_batch_of_images_with_their_own_scales():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(9, 3, 6, 5, generator=g)
    scale = torch.rand(9, generator=g) + 0.1
    key = fastnoise.random_key(g)
    out = fastnoise.noisy_copies(x, scale, torch.empty_like(x), key=key, flow=True)
    ref = reference_copies(x, scale, key, 0, 9, True)
    torch.testing.assert_close(out.double(), ref, rtol=1e-6, atol=1e-4)


def test_result_does_not_depend_on_threads_or_sub_batches():
    x = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    scale, key = torch.tensor([0.5]), (123, 456)
    full = fastnoise.noisy_copies(x, scale, torch.empty(1000, 1, 28, 28), key=key, threads=1)
    for threads in (2, 3, 8):
        again = fastnoise.noisy_copies(x, scale, torch.empty(1000, 1, 28, 28), key=key, threads=threads)
        assert torch.equal(again, full)
    parts = torch.empty(1000, 1, 28, 28)
    for lo, hi in ((0, 1), (1, 333), (333, 1000)):
        fastnoise.noisy_copies(x, scale, parts[lo:hi], key=key, first_image=lo)
    assert torch.equal(parts, full)
    other = fastnoise.noisy_copies(x, scale, torch.empty(1000, 1, 28, 28), key=(123, 457))
    assert not torch.equal(other, full)


def test_pixel_noise_is_laplace():
    x = torch.zeros(1, 1, 100, 100)
    out = fastnoise.noisy_copies(x, torch.tensor([0.7]), torch.empty(20, 1, 100, 100), key=(9, 9), flow=False)
    draws = out.double().flatten().numpy()
    ks = stats.kstest(draws, stats.laplace(scale=0.7).cdf)
    assert ks.pvalue > 1e-3, ks
    assert abs(np.mean(draws > 0) - 0.5) < 0.01
    assert np.abs(draws).max() <= 0.7 * 24 * math.log(2) + 1e-5


def test_loading_the_kernel_keeps_denormals():
    # -ffast-math is a compile flag only: loading the library must not switch on flush-to-zero
    assert float(torch.tensor([1e-39]) * 1.0) != 0.0


@pytest.mark.parametrize(
    ("x", "scale", "out", "match"),
    [
        (torch.rand(1, 1, 4, 4).double(), torch.tensor([1.0]), torch.empty(3, 1, 4, 4), "float32"),
        (torch.rand(1, 1, 4, 4), torch.tensor([1.0]), torch.empty(3, 1, 4, 5), "does not match"),
        (torch.rand(2, 1, 4, 4), torch.tensor([1.0]), torch.empty(3, 1, 4, 4), "does not match"),
        (torch.rand(1, 1, 4, 4), torch.ones(2), torch.empty(3, 1, 4, 4), "scale must have shape"),
        (torch.rand(1, 1, 4, 4), torch.tensor([1.0]), torch.empty(3, 1, 4, 4)[:, :, :, :2], "float32"),
    ],
)
def test_bad_arguments_raise(x, scale, out, match):
    with pytest.raises(ValueError, match=match):
        fastnoise.noisy_copies(x, scale, out, key=(1, 2))


def test_environment_variable_disables_the_kernel():
    code = "import wbench.fastnoise as f; print(f.available())"
    env = {**os.environ, "WBENCH_FASTNOISE": "0"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "False"
