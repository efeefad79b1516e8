"""Certified radii of Wasserstein and Laplace smoothing (Levine & Feizi, Theorem 1, Corollaries 1-3).

All radii are in units of normalised mass (the image divided by its total mass).

| noise | ground | certified W1 radius |
| --- | --- | --- |
| wasserstein | l1 | ``sigma / (2 sqrt 2) * ln(p / (1 - p))``  (Theorem 1, Eq. 34 with p_B <= 1 - p_A) |
| wasserstein | l2 | the above divided by ``sqrt 2``  (Corollary 3) |
| laplace | l1 or l2 | ``rho_L1 / 2`` with ``rho_L1 = sigma / (2 sqrt 2) * ln(p / (1 - p))`` (Corollary 1) |

Why the Laplace baseline is *not* divided by ``sqrt 2`` for the L2 ground metric: pixel
Laplace noise certifies the L1 ball ``||x - x'||_1 <= rho_L1`` (Lecuyer et al.'s
Proposition, Eq. 43-44). Corollary 1 shows ``||x - x'||_1 <= 2 W1(x, x')`` for W1 with
*any* L_p ground metric, because every off-diagonal cost is at least 1 on the pixel
grid; for L2 the distance between distinct pixels is also >= 1. So the W1 ball of radius
``rho_L1 / 2`` is inside the certified L1 ball for both ground metrics. Going through
Corollary 3 instead (L1-ground radius divided by ``sqrt 2``) would also be valid but
strictly weaker, so the direct Corollary 1 bound is used. The plain pixel-L1 certificate
is :func:`pixel_l1_radius`.

Two conventions decide what happens when the lower bound ``p_A`` is small
(:func:`apply_convention`) and which ground metric a radius is reported in when none is
given (:func:`resolve_ground`):

* ``"cohen"`` (default, Cohen et al. 2019): abstain when ``p_A < 1/2``; L1 ground
  (Theorem 1's radius);
* ``"authors"`` (Levine & Feizi's released code): never abstain; a guess with
  ``p_A <= 1/2`` is certified at radius 0, so if it is correct it counts towards the
  certified accuracy at radius 0. Radii are in the L2 ground metric (Wong et al.'s threat
  model), as that code reports them: ``wass_smooth_certify`` in its ``wass_smooth_utils.py``
  divides the L1-ground radius by ``sqrt 2`` (Corollary 3), and ``laplace_smooth_certify``
  halves ``rho_L1`` (Corollary 1, the same for both grounds). An explicit ``ground`` wins.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from wbench._validation import check_positive, check_real_dtype, is_real_number, plain
from wbench.options import Convention, Ground, Noise, parse_option

ABSTAIN = -1


def _as_probabilities(p_lower) -> np.ndarray:
    """``p_lower`` as a float64 array, refusing anything that is not real numbers.

    Accepted: Python and numpy real scalars, real numpy arrays, lists or tuples of real
    numbers, and torch tensors that do not require grad. Refused: strings, bools (also inside
    lists and arrays), complex numbers, ``None`` and other objects; a tensor that requires grad
    (a certificate is not a differentiable quantity: detach it explicitly).
    """
    if isinstance(p_lower, torch.Tensor):
        if p_lower.requires_grad:
            raise ValueError("p_lower is a tensor that requires grad; pass p_lower.detach()")
        check_real_dtype("p_lower", p_lower, integers=True)
        p = p_lower.detach().cpu().numpy()
    elif isinstance(p_lower, np.ndarray):
        check_real_dtype("p_lower", p_lower, integers=True)
        p = p_lower
    elif isinstance(p_lower, list | tuple):
        items = np.array(p_lower, dtype=object)
        bad = [v for v in items.flat if not is_real_number(v)]
        if bad:
            raise ValueError(f"p_lower must hold real numbers only, got {type(bad[0]).__name__} {bad[0]!r}")
        p = items
    elif is_real_number(p_lower):
        p = np.asarray(p_lower)
    else:
        raise ValueError(
            f"p_lower must be a real number or array of them, got {type(p_lower).__name__} {p_lower!r}"
        )
    p = np.asarray(p, dtype=np.float64)
    if not np.isfinite(p).all():
        raise ValueError("p_lower contains NaN or inf")
    if ((p < 0) | (p > 1)).any():
        raise ValueError(
            f"p_lower must lie in [0, 1]; got values from {float(p.min())!r} to {float(p.max())!r}"
        )
    return p


def resolve_ground(ground: Ground | str | None, convention: Convention | str = Convention.COHEN) -> Ground:
    """The ground metric of reported radii: ``ground`` when given, else the convention's.

    ``"cohen"`` implies L1 (Theorem 1); ``"authors"`` implies L2, the radius that Levine &
    Feizi's released code reports (the L1-ground radius divided by ``sqrt 2``, Corollary 3;
    see the module docstring).
    """
    convention = parse_option(Convention, convention, "convention")
    if ground is not None:
        return parse_option(Ground, ground, "ground")
    return Ground.L2 if convention is Convention.AUTHORS else Ground.L1


def _log_odds_radius(p: np.ndarray, sigma: float) -> np.ndarray:
    """``sigma / (2 sqrt 2) * ln(p / (1 - p))`` for p > 1/2, 0 otherwise; +inf at p = 1."""
    out = np.zeros_like(p)
    pos = p > 0.5
    with np.errstate(divide="ignore"):
        out[pos] = sigma / (2.0 * math.sqrt(2.0)) * (np.log(p[pos]) - np.log1p(-p[pos]))
    return out


def pixel_l1_radius(p_lower, sigma: float):
    """The Laplace baseline's L1 certificate ``rho_L1 = sigma / (2 sqrt 2) ln(p / (1 - p))`` (Eq. 43).

    Certifies ``||x_n - x'_n||_1 <= rho_L1`` in normalised mass; 0 when ``p_lower <= 1/2``.
    Accepts a float or an array; returns the same kind.
    """
    check_positive("sigma", sigma)
    p = _as_probabilities(p_lower)
    r = _log_odds_radius(np.atleast_1d(p), float(sigma)).reshape(p.shape)
    return float(r) if r.ndim == 0 else r


def certified_radius(
    p_lower,
    sigma: float,
    noise: Noise | str = Noise.WASSERSTEIN,
    ground: Ground | str = Ground.L1,
):
    """Certified W1 radius from a lower bound on the top-class probability.

    Parameters
    ----------
    p_lower : float or array_like
        Lower bound(s) on p_A, in [0, 1]: a real number, a real numpy array, a list of real
        numbers or a tensor that does not require grad. The runner-up is bounded by
        ``1 - p_lower``.
    sigma : float
        Noise standard deviation (normalised mass units), a real number > 0.
    noise : {"wasserstein", "laplace"}
        Flow-space noise (Theorem 1) or the pixel Laplace baseline (Corollary 1).
    ground : {"l1", "l2"}
        Ground metric of the W1 threat model (Corollary 3 for ``"l2"``).

    Returns
    -------
    float or numpy.ndarray
        The radius: ``sigma / (2 sqrt 2) ln(p / (1 - p))`` for Wasserstein/L1, divided by
        ``sqrt 2`` for Wasserstein/L2, halved for Laplace (either ground; see the module
        docstring). 0 when ``p_lower <= 1/2`` (no certificate beyond the point itself), +inf
        at ``p_lower = 1``.

    Raises
    ------
    ValueError
        ``p_lower`` outside [0, 1], not finite or not real (strings, bools, complex, tensors
        that require grad), ``sigma`` not a real number > 0 (``True`` is not one), or an
        unknown option.

    References
    ----------
    Levine & Feizi (2020), Theorem 1 (Eq. 34), Corollary 1, Corollary 3.
    """
    noise = parse_option(Noise, noise, "noise")
    ground = parse_option(Ground, ground, "ground")
    r = pixel_l1_radius(p_lower, sigma)
    if noise is Noise.LAPLACE:
        return r / 2.0
    return r / math.sqrt(2.0) if ground is Ground.L2 else r


def check_alpha(alpha: float) -> None:
    """Raise ``ValueError`` unless ``alpha`` is a significance level in (0, 1/2).

    One range for every procedure: at ``alpha >= 1/2`` the one-sided lower bound of CERTIFY is no
    longer below the point estimate, and PREDICT's test would not be a test.
    """
    if not (is_real_number(alpha) and 0.0 < alpha < 0.5):
        raise ValueError(f"alpha must be in (0, 0.5), got {plain(alpha)}")


def lower_confidence_bound(n_a: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion.

    Computed as the lower end of the exact two-sided interval at confidence ``1 - 2 alpha``
    (``scipy.stats.binomtest(...).proportion_ci(method="exact")``), as in Cohen et al.
    """
    if not (isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 1):
        raise ValueError(f"n must be a positive integer, got {plain(n)}")
    if not (0 <= n_a <= n):
        raise ValueError(f"count n_a={plain(n_a)} must lie in [0, n={plain(n)}]")
    check_alpha(alpha)
    from scipy.stats import binomtest  # scipy.stats takes about a second to import: only when used

    return float(
        binomtest(int(n_a), int(n)).proportion_ci(confidence_level=1 - 2 * alpha, method="exact").low
    )


def apply_convention(guess: int, p_lower: float, convention: Convention | str = Convention.COHEN) -> int:
    """The prediction CERTIFY reports: ``guess``, or ``-1`` to abstain (``"cohen"`` and ``p_lower < 1/2``)."""
    convention = parse_option(Convention, convention, "convention")
    if convention is Convention.COHEN and p_lower < 0.5:
        return ABSTAIN
    return int(guess)


def certified_accuracy(radii, correct, predictions, at) -> np.ndarray:
    """Fraction of images certified correct at each radius in ``at``.

    An image counts at radius ``r`` when it was not abstained on, its prediction is correct
    and its certified radius is ``>= r`` (so a correct radius-0 certificate counts at r = 0).
    """
    radii = np.asarray(radii, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool) & (np.asarray(predictions) != ABSTAIN)
    at = np.atleast_1d(np.asarray(at, dtype=np.float64))
    if radii.size == 0:
        return np.full(at.shape, np.nan)
    return ((radii[None, :] >= at[:, None]) & ok[None, :]).mean(axis=1)
