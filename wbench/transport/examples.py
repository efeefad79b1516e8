"""Seeded histogram pairs of equal mass for the verification of Lemma 1 and Corollaries 1-3.

Used by ``verify/`` and by :func:`wbench.quickcheck.run_quick_verification`; every pair
is a deterministic function of its arguments.
"""

from __future__ import annotations

import functools

import numpy as np


def random_pair(
    rng: np.random.Generator, shape: tuple[int, ...], density: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Two float64 histograms of ``shape`` ((H, W) or (C, H, W)) with equal mass per channel.

    Entries are uniform on [0, 1); with ``density < 1`` each pixel is kept with that
    probability (sparse, MNIST-like: most pixels exactly 0), at least one per channel
    and side. ``y`` is rescaled to the mass of ``x`` channel by channel; channels
    of a (C, H, W) pair get different masses (channel ``c`` is scaled by ``c + 1``).
    """
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    planes = shape if len(shape) == 3 else (1, *shape)
    c, h, w = planes
    out = []
    for _ in range(2):
        a = rng.random(planes)
        if density < 1.0:
            keep = rng.random(planes) < density
            for k in range(c):  # at least one pixel with mass per channel
                keep[k].flat[rng.integers(h * w)] = True
            a = np.where(keep, a, 0.0)
        out.append(a)
    x, y = out
    x *= np.arange(1, c + 1)[:, None, None]
    y *= (x.sum(axis=(1, 2)) / y.sum(axis=(1, 2)))[:, None, None]
    return (x, y) if len(shape) == 3 else (x[0], y[0])


def one_hot_pair(
    shape: tuple[int, int], source: tuple[int, int], target: tuple[int, int], mass: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """All of ``mass`` at pixel ``source`` in x and at pixel ``target`` in y (point-to-point transport)."""
    x, y = np.zeros(shape), np.zeros(shape)
    x[source] = mass
    y[target] = mass
    return x, y


@functools.lru_cache(maxsize=1)
def _digit_images() -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().images.astype(np.float64)


def digits_pair(first: int, second: int) -> tuple[np.ndarray, np.ndarray]:
    """Two real 8x8 handwritten digits (scikit-learn's ``load_digits``), with equal mass.

    Sparse like MNIST (about half of the pixels are 0). ``y`` is rescaled to the mass of ``x``.
    """
    images = _digit_images()
    x, y = images[first].copy(), images[second].copy()
    y *= x.sum() / y.sum()
    return x, y
