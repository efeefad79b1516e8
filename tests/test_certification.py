"""Certified radii, Clopper-Pearson bounds and conventions (Levine & Feizi, Theorem 1, Corollaries 1, 3)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from wbench.certification import (
    apply_convention,
    certified_accuracy,
    certified_radius,
    lower_confidence_bound,
    pixel_l1_radius,
)


@pytest.mark.parametrize(
    "noise, ground, factor",
    [
        ("wasserstein", "l1", 1.0),
        ("wasserstein", "l2", 1 / math.sqrt(2)),
        ("laplace", "l1", 0.5),
        ("laplace", "l2", 0.5),
    ],
)
@pytest.mark.parametrize("p, sigma", [(0.9, 0.1), (0.51, 0.005), (0.999, 1e-3)])
def test_radius_table(noise, ground, factor, p, sigma):
    base = sigma / (2 * math.sqrt(2)) * math.log(p / (1 - p))
    assert certified_radius(p, sigma, noise, ground) == pytest.approx(factor * base, rel=1e-13)


def test_radius_is_vectorised_and_zero_below_one_half():
    p = np.array([0.0, 0.3, 0.5, 0.75, 1.0])
    r = certified_radius(p, 0.2)
    assert isinstance(r, np.ndarray) and r.shape == p.shape
    np.testing.assert_array_equal(r[:3], 0.0)
    assert r[3] == pytest.approx(0.2 / (2 * math.sqrt(2)) * math.log(3.0), rel=1e-13)
    assert r[4] == math.inf
    for pi, ri in zip(p, r, strict=True):
        assert certified_radius(float(pi), 0.2) == ri
    assert isinstance(certified_radius(0.8, 0.2), float)
    np.testing.assert_array_equal(pixel_l1_radius(p, 0.2), r)
    assert certified_radius(p.reshape(5, 1), 0.2).shape == (5, 1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"p_lower": 1.2, "sigma": 0.1}, "p_lower"),
        ({"p_lower": -0.1, "sigma": 0.1}, "p_lower"),
        ({"p_lower": float("nan"), "sigma": 0.1}, "NaN"),
        ({"p_lower": 0.9, "sigma": 0.0}, "sigma"),
        ({"p_lower": 0.9, "sigma": -1.0}, "sigma"),
        ({"p_lower": 0.9, "sigma": 0.1, "noise": "gaussian"}, "noise"),
        ({"p_lower": 0.9, "sigma": 0.1, "ground": "linf"}, "ground"),
    ],
)
def test_radius_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        certified_radius(**kwargs)


@pytest.mark.parametrize("k, n, alpha", [(0, 10, 0.05), (7, 10, 0.05), (10, 10, 0.05), (9990, 10000, 0.001)])
def test_lower_bound_is_one_sided_clopper_pearson(k, n, alpha):
    expected = 0.0 if k == 0 else stats.beta.ppf(alpha, k, n - k + 1)
    assert lower_confidence_bound(k, n, alpha) == pytest.approx(expected, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize(
    "args, match", [((11, 10, 0.05), "count"), ((1, 0, 0.05), "n must"), ((1, 10, 0.7), "alpha")]
)
def test_lower_bound_validation(args, match):
    with pytest.raises(ValueError, match=match):
        lower_confidence_bound(*args)


def test_conventions():
    assert apply_convention(3, 0.49, "cohen") == -1
    assert apply_convention(3, 0.5, "cohen") == 3
    assert apply_convention(3, 0.49, "authors") == 3
    assert apply_convention(3, 0.9) == 3
    with pytest.raises(ValueError, match="convention"):
        apply_convention(3, 0.9, "mine")


def test_certified_accuracy_counts_correct_unabstained_certificates():
    radii = np.array([0.0, 0.1, 0.3, 0.0])
    correct = np.array([True, True, False, False])
    pred = np.array([2, 1, 4, -1])
    np.testing.assert_allclose(certified_accuracy(radii, correct, pred, [0.0, 0.05, 0.2]), [0.5, 0.25, 0.0])


@pytest.mark.parametrize(
    "p_lower, match",
    [
        ("0.9", "p_lower must be a real number or array of them, got str"),
        (True, "got bool"),
        (np.array([0.9, True], dtype=object), "dtype object"),
        (np.array([True, False]), "dtype bool"),
        (0.9 + 0j, "got complex"),
        (np.array([0.9 + 0j]), "dtype complex128"),
        (None, "got NoneType"),
        ([0.9, True], "p_lower must hold real numbers only, got bool True"),
        ([[0.9], ["0.8"]], "got str '0.8'"),
    ],
)
def test_p_lower_must_be_real(p_lower, match):
    """Issue 9, item 13: nothing is coerced into a probability."""
    with pytest.raises(ValueError, match=match):
        certified_radius(p_lower, 0.1)


@pytest.mark.parametrize("sigma", [True, "0.1", np.bool_(True), 0.1 + 0j, None])
def test_sigma_must_be_a_real_number(sigma):
    with pytest.raises(ValueError, match="sigma must be a finite number > 0"):
        certified_radius(0.9, sigma)


def test_tensors_that_require_grad_are_refused():
    import torch

    with pytest.raises(ValueError, match="p_lower is a tensor that requires grad"):
        certified_radius(torch.tensor(0.9, requires_grad=True), 0.1)
    with pytest.raises(ValueError, match="sigma must be a finite number > 0"):
        certified_radius(0.9, torch.tensor(0.1, requires_grad=True))
    expected = certified_radius(0.9, 0.1)
    assert certified_radius(torch.tensor(0.9, dtype=torch.float64), 0.1) == expected
    assert certified_radius(np.float32(0.75), np.float64(0.1)) == certified_radius(0.75, 0.1)
    assert certified_radius(1, 0.1) == math.inf
    assert certified_radius(np.array([0, 1]), 1).tolist() == [0, math.inf]


def test_p_lower_errors_print_plain_floats():
    with pytest.raises(ValueError, match=r"got values from 1\.5 to 1\.5\)?$") as info:
        certified_radius(np.float64(1.5), 0.1)
    assert "np." not in str(info.value)
    with pytest.raises(ValueError, match=r"from -0\.25 to 0\.5") as info:
        certified_radius(np.array([-0.25, 0.5]), 0.1)
    assert "np." not in str(info.value)


def _authors_radius(p, stdev, noise):
    """wass_smooth_utils.wass_smooth_certify / laplace_smooth_certify of alevine0/wasserstein_smoothing."""
    r = max((math.log(p) - math.log(1.0 - p)) * stdev / (2**1.5), 0.0)
    return r / (2**0.5) if noise == "wasserstein" else r / 2.0


def test_authors_convention_implies_their_l2_ground_radius():
    """Issue 9, item 17: the authors' released code reports the L2-ground radius (divides by sqrt 2)."""
    from wbench.certification import resolve_ground
    from wbench.certify_run import CertifySettings
    from wbench.options import Ground

    assert resolve_ground(None, "authors") is Ground.L2
    assert resolve_ground(None, "cohen") is Ground.L1
    assert resolve_ground("l1", "authors") is Ground.L1
    assert CertifySettings(sigma=0.1, convention="authors").ground == "l2"
    assert CertifySettings(sigma=0.1, convention="authors", ground="l1").ground == "l1"
    assert CertifySettings(sigma=0.1).ground == "l1"
    for noise in ("wasserstein", "laplace"):
        s = CertifySettings(sigma=0.02, noise=noise, convention="authors")
        for p in (0.6, 0.9, 0.999):
            assert certified_radius(p, s.sigma, s.noise, s.ground) == pytest.approx(
                _authors_radius(p, s.sigma, noise), rel=1e-13
            )


def test_reproduce_config_resolves_the_implied_ground():
    from wbench.reproduce import ReproduceConfig

    assert ReproduceConfig(convention="authors").resolved().ground == "l2"
    assert ReproduceConfig().resolved().ground == "l1"
    assert ReproduceConfig(convention="authors", ground="l1").resolved().ground == "l1"
