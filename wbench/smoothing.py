"""Randomized smoothing with flow-space (Wasserstein) or pixel (Laplace) noise.

A short core in the style of Cohen et al.'s ``core.py`` (locuslab/smoothing):
:meth:`Smooth.predict` and :meth:`Smooth.certify` read like the PREDICT and CERTIFY
pseudocode. The smoothed classifier is Eq. 33 of Levine & Feizi,

    f_bar(x) = E_delta [ f( m * Delta(x / m, delta) ) ],   delta_k i.i.d. Laplace, std sigma,

with ``m`` the total mass of the image (all channels and pixels), per-channel flow
plans for colour images (Corollary 2) and nothing clipped. The Laplace baseline
replaces the flow by i.i.d. pixel noise on ``x / m``.

The hot path uses the identity ``m * Delta(x / m, delta) = x + m * div(delta)`` (Delta is
affine in ``x`` and linear in ``delta``): the mass is folded into the noise scale, so the
image is never divided and multiplied back. On the CPU in float32 each sub-batch of noisy
copies is one pass of the compiled kernel of :mod:`wbench.fastnoise` (Philox words, Laplace
transform and flow stencil fused, on torch's own threads); elsewhere it is one RNG call and a
few in-place element-wise passes. Counts are accumulated on the
device with ``torch.bincount`` and reach the host once, at the end.

References
----------
.. [1] A. Levine, S. Feizi. "Wasserstein Smoothing: Certified Robustness against
   Wasserstein Adversarial Attacks." AISTATS 2020, Theorem 1 (Eqs. 33-35), Corollary 2.
.. [2] J. Cohen, E. Rosenfeld, Z. Kolter. "Certified Adversarial Robustness via
   Randomized Smoothing." ICML 2019, PREDICT and CERTIFY.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.stats import binomtest
from torch import nn

from wbench import fastnoise
from wbench._validation import check_positive
from wbench.certification import apply_convention, certified_radius, lower_confidence_bound
from wbench.devices import resolve_device
from wbench.flow import RandomWords, laplace_from_words
from wbench.noise import check_mass_images
from wbench.options import Convention, Ground, Noise, parse_option

ABSTAIN = -1


class Smooth:
    """A randomized-smoothing classifier around a base network (Cohen et al.'s ``Smooth``).

    Use the subclasses :class:`WassersteinSmoothing` (flow-space Laplace noise, Eq. 33) and
    :class:`LaplaceSmoothing` (i.i.d. pixel Laplace noise, the baseline of Levine & Feizi).

    Parameters
    ----------
    base : torch.nn.Module
        Base classifier mapping ``(B, C, H, W)`` images (original units) to ``(B, num_classes)``
        scores. It is put in eval mode.
    num_classes : int
        Number of classes.
    sigma : float
        Standard deviation of every Laplace variable, in units of normalised mass.
    batch_size : int
        Default number of noisy copies per forward pass.
    device : str or torch.device, optional
        Where sampling and the network run (``None``/``"auto"``: CUDA if available). The base
        network is moved there.
    generator : torch.Generator or int, optional
        A generator on ``device``, or an integer seed for a new one. A fixed seed gives
        identical counts and certificates. ``None``: a randomly seeded generator.
    """

    noise: Noise

    def __init__(
        self,
        base: nn.Module,
        num_classes: int,
        sigma: float,
        *,
        batch_size: int = 1000,
        device: str | torch.device | None = None,
        generator: torch.Generator | int | None = None,
    ):
        if type(self) is Smooth:
            raise TypeError("use WassersteinSmoothing or LaplaceSmoothing")
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        check_positive("sigma", sigma)
        self._check_batch_size(batch_size)
        self.device = resolve_device(device)
        self.base = base.to(self.device).eval()
        self.num_classes = num_classes
        self.sigma = float(sigma)
        self.batch_size = batch_size
        self._sampler: _NoiseSampler | None = None  # buffers reused across calls
        if isinstance(generator, torch.Generator):
            if generator.device.type != self.device.type:
                raise ValueError(f"generator is on {generator.device}, the classifier on {self.device}")
            self.generator = generator
        else:
            self.generator = torch.Generator(device=self.device)
            if generator is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(int(generator))

    @staticmethod
    def _check_batch_size(batch_size: int) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")

    # --- the paper's procedures ------------------------------------------------------------

    def predict(self, x: torch.Tensor, n: int, alpha: float, batch_size: int | None = None) -> int:
        """Cohen et al.'s PREDICT: the top class, or ``-1`` (abstain) if it is not significant.

        Draws ``n`` noisy copies and runs a two-sided binomial test of the top-two counts
        (``scipy.stats.binomtest``, p = 1/2); abstains when its p-value exceeds ``alpha``.
        """
        _check_alpha(alpha)
        counts = self.sample_counts(x, n, batch_size)
        top2 = np.argsort(counts, kind="stable")[::-1][:2]
        n_a, n_b = int(counts[top2[0]]), int(counts[top2[1]])
        if n_a + n_b == 0 or binomtest(n_a, n_a + n_b, 0.5).pvalue > alpha:
            return ABSTAIN
        return int(top2[0])

    def certify(
        self,
        x: torch.Tensor,
        n0: int,
        n: int,
        alpha: float,
        batch_size: int | None = None,
        ground: Ground | str = Ground.L1,
        convention: Convention | str = Convention.COHEN,
    ) -> tuple[int, float, float]:
        """Cohen et al.'s CERTIFY with the radius of Theorem 1 / Corollaries 1 and 3.

        ``n0`` selection samples pick the guess ``c_A``; ``n`` fresh samples give a one-sided
        Clopper-Pearson lower bound ``p_A`` on P(f(noisy x) = c_A) at level ``alpha``; the radius
        is :func:`wbench.certification.certified_radius` of ``p_A`` (a W1 radius in units of
        normalised mass). Under ``convention="cohen"`` the classifier abstains (prediction
        ``-1``, radius 0) when ``p_A < 1/2``; under ``"authors"`` it never abstains.

        Returns
        -------
        prediction : int
            ``c_A``, or ``-1`` when abstaining.
        p_lower : float
            The lower confidence bound on ``p_A``.
        radius : float
            Certified W1 radius (0 when ``p_A <= 1/2``).
        """
        _check_alpha(alpha)
        ground = parse_option(Ground, ground, "ground")
        convention = parse_option(Convention, convention, "convention")
        x, mass = self._prepare(x)  # validated once for both sampling rounds
        guess = int(np.argmax(self._counts(x, mass, n0, batch_size)))
        n_a = int(self._counts(x, mass, n, batch_size)[guess])
        p_lower = lower_confidence_bound(n_a, n, alpha)
        prediction = apply_convention(guess, p_lower, convention)
        radius = certified_radius(p_lower, self.sigma, self.noise, ground) if prediction != ABSTAIN else 0.0
        return prediction, p_lower, float(radius)

    # --- Monte Carlo ---------------------------------------------------------------------

    def sample_counts(self, x: torch.Tensor, num: int, batch_size: int | None = None) -> np.ndarray:
        """Class counts of the base classifier on ``num`` noisy copies of one image.

        Parameters
        ----------
        x : torch.Tensor
            One image ``(C, H, W)`` or ``(1, C, H, W)``: finite, non-negative, positive mass.
        num : int
            Number of noise draws.
        batch_size : int, optional
            Copies per forward pass (default: the constructor's). On the CPU the counts do
            not depend on it: each call draws one key (or one word stream) from the generator,
            and copy ``k`` always takes the same noise (:mod:`wbench.fastnoise`: Philox counter
            ``k``; otherwise a fixed slice of a :class:`wbench.flow.RandomWords` stream).

        Returns
        -------
        numpy.ndarray
            int64 counts of shape ``(num_classes,)``.
        """
        return self._counts(*self._prepare(x), num, batch_size)

    def _counts(self, x: torch.Tensor, mass: float, num: int, batch_size: int | None) -> np.ndarray:
        """:meth:`sample_counts` on an image (and its mass) already checked by :meth:`_prepare`."""
        if not isinstance(num, int) or num < 0:
            raise ValueError(f"number of samples must be a non-negative integer, got {num!r}")
        batch_size = self.batch_size if batch_size is None else batch_size
        self._check_batch_size(batch_size)
        counts = torch.zeros(self.num_classes, dtype=torch.int64, device=self.device)
        sampler = self._sampler_for(x, min(batch_size, max(num, 1))).bind(x, self.sigma, self.generator, mass)
        with torch.inference_mode():
            remaining = num
            while remaining > 0:
                b = min(batch_size, remaining)
                scores = self.base(sampler.draw(b))
                if scores.ndim != 2 or scores.shape[1] != self.num_classes:
                    raise ValueError(
                        f"base classifier returned scores of shape {tuple(scores.shape)}, "
                        f"expected ({b}, {self.num_classes})"
                    )
                counts += torch.bincount(scores.argmax(1), minlength=self.num_classes)
                remaining -= b
        return counts.cpu().numpy()

    def _sampler_for(self, x: torch.Tensor, capacity: int) -> _NoiseSampler:
        key = (tuple(x.shape), x.dtype, x.device, self.noise, capacity)
        if self._sampler is None or self._sampler.key != key:
            self._sampler = _NoiseSampler(x.shape, x.dtype, x.device, self.noise, capacity)
        return self._sampler

    def _prepare(self, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        """The image as ``(1, C, H, W)`` on the device, validated, and its total mass (one sync)."""
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim == 3:
            x = x.unsqueeze(0)
        if x.ndim != 4 or x.shape[0] != 1:
            raise ValueError(f"x must be one image (C, H, W) or (1, C, H, W); got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"x must be a floating tensor, got {x.dtype}")
        x = x.to(self.device)
        # one device sync: NaN and -inf reach the minimum, NaN and +inf the sum
        lowest, mass = torch.stack((x.amin(), x.sum())).tolist()
        if not (math.isfinite(lowest) and math.isfinite(mass) and lowest >= 0 and mass > 0):
            check_mass_images(x)  # names the problem
            raise ValueError(f"x has a total mass of {mass} (overflow in {x.dtype})")
        return x, mass


class WassersteinSmoothing(Smooth):
    """Wasserstein smoothing (Levine & Feizi, Eq. 33): i.i.d. Laplace flow plans, std ``sigma``."""

    noise = Noise.WASSERSTEIN


class LaplaceSmoothing(Smooth):
    """The Laplace baseline: i.i.d. Laplace pixel noise of std ``sigma`` on ``x / mass``."""

    noise = Noise.LAPLACE


class _NoiseSampler:
    """Reusable buffers for the noisy copies of one image (the hot loop allocates nothing).

    On the CPU in float32 the copies come from :func:`wbench.fastnoise.noisy_copies` (copy ``k``
    of an image is Philox image ``k`` under the key drawn at :meth:`bind`); otherwise every copy
    consumes ``words_per_image`` int64 words of a :class:`RandomWords` stream. Either way, on the
    CPU the concatenation of sub-batches equals one large batch. A sampler is kept by its
    :class:`Smooth` and re-bound to each new image of the same shape, so repeated calls do not
    pay for fresh pages either.
    """

    def __init__(
        self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, noise: Noise, capacity: int
    ):
        _, c, h, w = shape
        self.key = (tuple(shape), dtype, device, noise, capacity)
        self.noise = noise
        self.out = torch.empty(capacity, c, h, w, dtype=dtype, device=device)
        self.fused = fastnoise.usable(self.out)  # CPU float32: the compiled kernel
        self.scale_t = torch.empty(1, dtype=torch.float32)
        self.n_v, self.n_h = c * (h - 1) * w, c * h * (w - 1)
        self.per_image = self.n_v + self.n_h if noise is Noise.WASSERSTEIN else c * h * w
        self.words_per_image = (self.per_image + 1) // 2
        self.eps = self.eps_cast = None  # the latest unit-scale draws (torch path), for tests
        if self.fused:
            return
        self.words = torch.empty(capacity, self.words_per_image, dtype=torch.int64, device=device)
        self.sign = torch.empty(capacity, self.per_image, dtype=torch.int32, device=device)
        if dtype != torch.float32:
            self.eps_cast = torch.empty(capacity, self.per_image, dtype=dtype, device=device)

    def bind(
        self, x: torch.Tensor, sigma: float, generator: torch.Generator, mass: float | None = None
    ) -> _NoiseSampler:
        """Sample around image ``x`` ``(1, C, H, W)`` (total ``mass``) with noise std ``sigma``."""
        self.x, self.generator = x, generator
        # the Laplace scale of the mass-space noise m * delta, m * sigma / sqrt(2), folded into
        # Delta's additions (a host number: no sync in the sampling loop)
        self.scale = (float(x.sum()) if mass is None else mass) * sigma / math.sqrt(2.0)
        if self.fused:  # one Philox stream per image; copies are numbered from 0
            self.philox_key, self.drawn = fastnoise.random_key(generator), 0
            self.scale_t.fill_(self.scale)
            self.x_c = x.contiguous()
        else:
            self.stream = RandomWords(generator, x.device)  # one word stream per image
        return self

    def draw(self, b: int) -> torch.Tensor:
        """``b`` noisy copies ``m * Delta(x / m, delta)`` (or ``x + m * eps``), shape (b, C, H, W)."""
        if self.fused:
            out = fastnoise.noisy_copies(
                self.x_c,
                self.scale_t,
                self.out[:b],
                key=self.philox_key,
                first_image=self.drawn,
                flow=self.noise is Noise.WASSERSTEIN,
            )
            self.drawn += b
            return out
        words = self.stream.fill_(self.words[:b])  # all 64 bits
        words32 = words.view(torch.int32)[:, : self.per_image]
        cast = None if self.eps_cast is None else self.eps_cast[:b]
        eps = laplace_from_words(words32, 1.0, cast, self.sign[:b])  # unit scale; b enters as alpha
        self.eps = eps
        out = self.out[:b]
        out.copy_(self.x.expand_as(out))
        b_ = self.scale
        if self.noise is Noise.LAPLACE:
            return out.add_(eps.view_as(out), alpha=b_)
        _, c, h, w = out.shape
        v = eps[:, : self.n_v].view(b, c, h - 1, w)
        hz = eps[:, self.n_v :].view(b, c, h, w - 1)
        # Definition 3.1 with delta = b * eps: x[i,j] + v[i,j] - v[i-1,j] + h[i,j] - h[i,j-1]
        out[..., :-1, :].add_(v, alpha=b_)
        out[..., 1:, :].sub_(v, alpha=b_)
        out[..., :, :-1].add_(hz, alpha=b_)
        out[..., :, 1:].sub_(hz, alpha=b_)
        return out


def _check_alpha(alpha: float) -> None:
    if not (isinstance(alpha, (int, float)) and 0.0 < alpha < 1.0):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
