"""The noise stream's portable reference (wbench.noise_stream): known answers, the Laplace law, devices."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from wbench import noise_stream as ns
from wbench.noise import noisy_copies
from wbench.options import Noise

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


@pytest.mark.parametrize(("counter", "key", "expected"), KAT)
def test_portable_philox_matches_random123_known_answers(counter, key, expected):
    c0 = torch.tensor([counter[0]], dtype=torch.int64)
    words = ns.philox4x32_10(key, (c0, *counter[1:]))
    assert tuple(int(w) for w in words[0]) == expected


def test_stream_words_are_philox_at_the_documented_counters():
    index, copy = torch.tensor([3, 2**32 - 1]), torch.tensor([0, 77])
    words = ns.stream_words(index, copy, 12345, ns.Tag.TRAINING, 3)
    for row in range(2):
        for j in range(3):
            c0 = torch.tensor([j], dtype=torch.int64)
            block = ns.philox4x32_10((12345, int(index[row])), (c0, int(copy[row]), int(ns.Tag.TRAINING), 0))
            assert words[row, 4 * j : 4 * j + 4].tolist() == block[0].tolist()


def test_laplace_transform_is_the_inverse_cdf_to_float32_accuracy():
    words = torch.arange(0, 2**23, dtype=torch.int64)  # every magnitude, positive sign
    got = ns.laplace_from_words(words).double()
    v = (words.double() + 0.5) * 2.0**-23
    rel = ((got - torch.log(v)) / torch.log(v)).abs()
    assert float(rel.max()) <= 1.5 * torch.finfo(torch.float32).eps
    negative = ns.laplace_from_words(words + 2**31).double()
    assert torch.equal(negative, -got)  # bit 31 flips the sign, nothing else
    assert float(got.abs().max()) <= ns.LAPLACE_BOUND


def test_unit_noise_is_laplace_and_independent_across_copies():
    n = ns.unit_noise(torch.full((200,), 5), torch.arange(200), 1, ns.Tag.SMOOTHING, 1000)
    draws = n.double().flatten().numpy()
    ks = stats.kstest(draws, stats.laplace(scale=1.0).cdf)
    assert ks.pvalue > 1e-3, ks
    assert abs(np.mean(draws > 0) - 0.5) < 0.005
    assert abs(np.std(draws) - math.sqrt(2)) < 0.01
    # neighbouring copies and neighbouring variables are uncorrelated
    assert abs(np.corrcoef(n[:-1].flatten().numpy(), n[1:].flatten().numpy())[0, 1]) < 0.01
    assert abs(np.corrcoef(n[:, :-1].flatten().numpy(), n[:, 1:].flatten().numpy())[0, 1]) < 0.01


def test_address_fields_select_different_streams():
    base = ns.unit_noise(torch.tensor([4]), torch.tensor([9]), 1, ns.Tag.SMOOTHING, 64)
    for index, copy, seed, tag in ((5, 9, 1, 0), (4, 10, 1, 0), (4, 9, 2, 0), (4, 9, 1, 1)):
        other = ns.unit_noise(torch.tensor([index]), torch.tensor([copy]), seed, ns.Tag(tag), 64)
        assert not torch.equal(other, base)


@pytest.mark.parametrize("bad", [-1, 2**32, 1.5, True])
def test_addresses_outside_32_bits_raise(bad):
    with pytest.raises(ValueError, match="seed"):
        ns.check_address(bad, (0, 1), (0, 1))
    with pytest.raises(ValueError, match="copy"):
        ns.check_address(0, (0, 1), (2**32 - 5, 2**32 + 1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_portable_stream_on_cuda_matches_the_cpu_words():
    index = torch.tensor([0, 7, 2**31 + 5, 2**32 - 1])
    copy = torch.tensor([0, 1, 123456, 2**32 - 1])
    cpu = ns.stream_words(index, copy, 99, ns.Tag.SMOOTHING, 257)
    cuda = ns.stream_words(index.cuda(), copy.cuda(), 99, ns.Tag.SMOOTHING, 257)
    assert torch.equal(cuda.cpu(), cpu)
    lap_cpu, lap_cuda = ns.laplace_from_words(cpu), ns.laplace_from_words(cuda).cpu()
    torch.testing.assert_close(lap_cuda, lap_cpu, rtol=2 * torch.finfo(torch.float32).eps, atol=0.0)
    x = torch.rand(1, 3, 8, 9, generator=torch.Generator().manual_seed(0))
    scale = torch.tensor([0.2])
    kwargs = dict(seed=99, index=index, copy=copy, tag=ns.Tag.SMOOTHING, noise=Noise.WASSERSTEIN)
    on_cuda = noisy_copies(x.cuda(), scale.cuda(), **kwargs).cpu()
    on_cpu = noisy_copies(x, scale, **kwargs)
    # float32: a few roundings of terms up to 16.7 * 0.2 in size
    torch.testing.assert_close(on_cuda, on_cpu, rtol=0.0, atol=8 * 0.2 * 17 * torch.finfo(torch.float32).eps)


def test_runs_record_the_stream_version_not_the_implementation():
    from wbench.runio import environment_record

    record = environment_record()
    assert record["noise_stream"] == ns.STREAM_VERSION == "philox4x32-10/v1"
    assert "cpu_noise_sampler" not in record
