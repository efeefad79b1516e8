"""Every asv suite imports, sets up and runs once on the CPU at its smallest parameters.

asv only reports a broken benchmark when someone runs it; this makes a broken suite fail the normal
test run too. Numeric parameters (batch, size, radius) take their smallest value; categorical ones
(solver, impl, noise, mode, shape) are all exercised; ``device`` is ``"cpu"`` (the CUDA cases must
skip via ``NotImplementedError`` on a machine without a GPU, which is tested separately).
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import math
import numbers
import pkgutil

import numpy as np
import pytest
import torch

import bench
from bench import _common as common

BENCH_PREFIXES = ("time_", "timeraw_", "peakmem_", "mem_", "track_")
SUITE_MODULES = sorted(
    name for _, name, _ in pkgutil.iter_modules(bench.__path__) if name.startswith("benchmark_")
)


def _suites():
    for mod_name in SUITE_MODULES:
        module = importlib.import_module(f"bench.{mod_name}")
        for cls_name, cls in vars(module).items():
            if cls_name.startswith("_") or not inspect.isclass(cls) or cls.__module__ != module.__name__:
                continue
            methods = [m for m in dir(cls) if m.startswith(BENCH_PREFIXES)]
            if methods:
                yield mod_name, cls, methods


def _param_lists(cls) -> list[list]:
    params = cls.params
    if params and not isinstance(params[0], (list, tuple)):
        params = [params]
    return [list(p) for p in params]


def _smallest_cpu_cases(cls):
    """Parameter tuples: min of each numeric list, every categorical value, cpu only."""
    reduced = []
    for name, values in zip(cls.param_names, _param_lists(cls), strict=True):
        if name == "device":
            reduced.append(["cpu"])
        elif all(isinstance(v, numbers.Number) for v in values):
            reduced.append([min(values)])
        else:
            reduced.append(values)
    return list(itertools.product(*reduced))


CASES = [
    pytest.param(cls, method, case, id=f"{mod}.{cls.__name__}.{method}{list(case)}")
    for mod, cls, methods in _suites()
    for method in methods
    for case in _smallest_cpu_cases(cls)
]


def test_every_suite_module_is_collected():
    assert SUITE_MODULES == [
        "benchmark_attack",
        "benchmark_certification",
        "benchmark_flow",
        "benchmark_gradnorm",
        "benchmark_scaleout",
        "benchmark_training",
        "benchmark_transport",
    ]
    assert {mod for mod, _, _ in _suites()} == set(SUITE_MODULES)


# Knobs that only shrink the work of a smoke call (the code path is the same): fewer interleaved
# rounds in ``track_`` ratios, and ResNet-18 training at batch 2 instead of 8.
SMOKE_OVERRIDES = {"rounds_per_call": 1, "batch": 2}


@pytest.mark.parametrize(("cls", "method", "case"), CASES)
def test_benchmark_runs_once_on_cpu(cls, method, case):
    assert len(cls.param_names) == len(_param_lists(cls))
    suite = cls()
    for name, value in SMOKE_OVERRIDES.items():
        if hasattr(cls, name):
            setattr(suite, name, value)
    try:
        suite.setup(*case)
    except NotImplementedError as exc:  # a documented skip (e.g. ResNet-18 at large batch on CPU)
        assert "cuda" not in case, exc
        pytest.skip(f"asv would skip: {exc}")
    result = getattr(suite, method)(*case)
    if method.startswith("track_"):
        assert isinstance(result, float) and math.isfinite(result) and result > 0, result
        assert getattr(suite, "unit", None) not in (None, "unit")


def test_at_least_one_cpu_case_per_suite_runs():
    runnable = {id(cls) for cls, _, case in (p.values for p in CASES)}
    assert len(runnable) == len(list(_suites()))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the skip path on machines without CUDA")
@pytest.mark.parametrize(("cls",), [pytest.param(cls, id=cls.__name__) for _, cls, _ in _suites()])
def test_cuda_cases_skip_without_a_gpu(cls):
    lists = _param_lists(cls)
    case = [values[0] for values in lists]
    if "device" in cls.param_names:
        case[cls.param_names.index("device")] = "cuda"
    elif "Cuda" not in cls.__name__:
        pytest.skip("CPU-only suite")
    with pytest.raises(NotImplementedError, match="CUDA is not available"):
        cls().setup(*case)


def test_suite_timeouts_are_set():
    for _, cls, _ in _suites():
        assert 0 < cls.timeout <= 600, cls.__name__


def test_grid_switches_on_full_flag(monkeypatch):
    monkeypatch.setattr(common, "FULL", False)
    assert common.grid([1], [1, 2]) == [1]
    monkeypatch.setattr(common, "FULL", True)
    assert common.grid([1], [1, 2]) == [1, 2]


@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_histogram_pairs_have_unit_mass_and_expected_support(kind):
    x, y = common.histogram_pair(16, kind, seed=3)
    for h in (x, y):
        assert h.shape == (16, 16) and h.dtype == np.float64
        assert np.all(h >= 0)
        assert h.sum() == pytest.approx(1.0, rel=1e-12)
        nonzero = np.count_nonzero(h) / h.size
        assert nonzero == 1.0 if kind == "dense" else 0.05 < nonzero < 0.4
    with pytest.raises(ValueError, match="unknown histogram kind"):
        common.histogram_pair(4, "diagonal")


def test_mnist_like_images_are_seeded_nonnegative_with_positive_mass():
    a = common.mnist_like(16, 1, 28, 28, seed=5)
    b = common.mnist_like(16, 1, 28, 28, seed=5)
    assert torch.equal(a, b)
    assert bool((a >= 0).all()) and bool((a.sum(dim=(1, 2, 3)) > 0).all())
    assert 0.1 < float((a > 0).float().mean()) < 0.35  # MNIST-like sparsity
    dense = common.mnist_like(2, 3, 32, 32, density=1.0)
    assert bool((dense > 0).all())


def test_benchmark_images_are_real_mnist5k_digits_at_28x28():
    from wbench.data import load_dataset

    train = load_dataset("mnist5k", "train")
    x = common.images(12, 1, 28, 28, seed=3)
    assert x.shape == (12, 1, 28, 28) and x.dtype == torch.float32
    assert torch.equal(x, train.get_batch(list(range(3, 15)))[0])  # training digits 3..14, unchanged
    assert torch.equal(common.mnist5k_images(4001)[4000], train[0][0])  # past 4,000 the digits repeat
    assert torch.equal(
        common.images(2, 3, 32, 32, seed=1), common.mnist_like(2, 3, 32, 32, density=1.0, seed=1)
    )
    a, b = common.histogram_pair(28, "sparse", seed=0)
    assert a.sum() == pytest.approx(1.0, rel=1e-12) and b.sum() == pytest.approx(1.0, rel=1e-12)
    np.testing.assert_allclose(
        a * train[0][0].double().sum().item(), train[0][0][0].double().numpy(), rtol=1e-12
    )
    assert train[0][1] != train[1][1]  # two different digits


def test_make_train_step_rejects_unknown_mode():
    net = torch.nn.Linear(1, 1)
    with pytest.raises(ValueError, match="unknown training mode 'adversarial'"):
        common.make_train_step(net, "adversarial", device=torch.device("cpu"))


def test_make_train_step_updates_the_model():
    from wbench.models import build_model

    torch.manual_seed(0)
    net = build_model("mnist_wong")
    before = [p.detach().clone() for p in net.parameters()]
    step = common.make_train_step(net, "flow_noise", device=torch.device("cpu"))
    step(common.mnist_like(4), common.labels(4))
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
