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
import subprocess
import sys

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
        assert 0 < cls.timeout <= 180, cls.__name__
        assert cls.rounds == 1, cls.__name__  # one process per case: the budget below assumes it


def _reduced_cpu_cases(cls) -> list[tuple]:
    lists = [["cpu"] if n == "device" else v for n, v in zip(cls.param_names, _param_lists(cls), strict=True)]
    return list(itertools.product(*lists))


def test_timed_suites_set_their_sampling_and_fit_the_budget():
    """Every ``time_`` suite sets asv's sampling knobs itself, and the reduced CPU grid's sampling time
    (cases x the per-case cap ``repeat[2]``) stays within 3 minutes, so a full ``asv run`` fits its
    10-minute budget on 2 cores with room for setup, warm-ups and a loaded machine."""
    total = 0.0
    for _, cls, methods in _suites():
        timed = [m for m in methods if m.startswith("time_")]
        if not timed:
            continue
        min_repeat, max_repeat, max_time = cls.repeat
        assert 1 <= min_repeat <= max_repeat and 0 < max_time <= 5.0, cls.__name__
        assert cls.number == 1 and cls.warmup_time == 0.0, cls.__name__  # warm-ups are in setup
        assert cls.min_run_count == min_repeat, cls.__name__
        total += len(timed) * len(_reduced_cpu_cases(cls)) * max_time
    assert total <= 180.0, total


def test_full_grid_extends_the_reduced_one(monkeypatch):
    monkeypatch.setenv("WBENCH_BENCH_FULL", "1")
    full_common = importlib.reload(common)
    try:
        assert full_common.FULL
        for mod_name in SUITE_MODULES:
            module = importlib.import_module(f"bench.{mod_name}")
            reduced = {n: _param_lists(c) for n, c in vars(module).items() if hasattr(c, "param_names")}
            full_module = importlib.reload(module)
            for name, lists in reduced.items():
                full_lists = _param_lists(getattr(full_module, name))
                for small, big in zip(lists, full_lists, strict=True):
                    assert set(small) <= set(big), (mod_name, name, small, big)
                assert sum(map(len, full_lists)) >= sum(map(len, lists))
    finally:
        monkeypatch.delenv("WBENCH_BENCH_FULL")
        importlib.reload(common)
        for mod_name in SUITE_MODULES:
            importlib.reload(importlib.import_module(f"bench.{mod_name}"))


def test_per_process_builds_once_per_key_and_keeps_one_entry():
    built = []

    def build(tag):
        def make():
            built.append(tag)
            return {"tag": tag}

        return make

    first = common.per_process(("suite", 1), build("a"))
    assert common.per_process(("suite", 1), build("b")) is first  # reused, not rebuilt
    assert built == ["a"]
    assert common.per_process(("suite", 2), build("c")) == {"tag": "c"}
    assert common.per_process(("suite", 1), build("d")) == {"tag": "d"}  # one entry: rebuilt
    assert built == ["a", "c", "d"]


def test_speed_gate_imports_without_pytest():
    """asv imports every module of bench/ in a virtualenv holding only wbench's dependencies."""
    code = "import sys; sys.modules['pytest'] = None; import bench.speed_gate as g; print(len(g.CHECKS))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "5"


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
