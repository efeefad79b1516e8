"""Randomized smoothing with flow-space (Wasserstein) or pixel (Laplace) noise.

A short core in the style of Cohen et al.'s ``core.py`` (locuslab/smoothing):
:meth:`Smooth.predict` and :meth:`Smooth.certify` read like the PREDICT and CERTIFY
pseudocode. The smoothed classifier is Eq. 33 of Levine & Feizi,

    f_bar(x) = E_delta [ f( m * Delta(x / m, delta) ) ],   delta_k i.i.d. Laplace, std sigma,

with ``m`` the total mass of the image (all channels and pixels), per-channel flow
plans for colour images (Corollary 2) and nothing clipped. The Laplace baseline
replaces the flow by i.i.d. pixel noise on ``x / m``.

Noise is a property of the seed and the image's data-set index alone: copy ``k`` of image ``i``
under seed ``s`` is copy ``k`` of the stream ``(s, i)`` of :mod:`wbench.noise_stream`, drawn by
:func:`wbench.noise.noisy_copies`. CERTIFY's selection round takes copies ``[0, n0)`` and its
estimation round copies ``[n0, n0 + n)``, so the two are independent. Counts and certificates
therefore do not depend on the device's implementation (compiled or portable), the thread
count, the sub-batch size, or which other images a run certifies. Counts are accumulated on the
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
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from wbench._validation import check_positive
from wbench.certification import (
    ABSTAIN,
    apply_convention,
    certified_radius,
    check_alpha,
    lower_confidence_bound,
)
from wbench.devices import resolve_device
from wbench.noise import check_mass_images, noise_scale, noisy_copies
from wbench.noise_stream import UINT32, Tag, check_address
from wbench.options import Convention, Ground, Noise, parse_option

Progress = Callable[[int], object]
"""Called with the number of noisy copies just classified (once per sub-batch)."""


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
    seed : int
        The noise seed, in [0, 2**32). With the image's data-set index (the ``index`` argument of
        :meth:`certify`, :meth:`predict` and :meth:`sample_counts`) it fixes every noisy copy.
    batch_size : int
        Default number of noisy copies per forward pass (speed only: results do not depend on it).
    device : str or torch.device, optional
        Where sampling and the network run (``None``/``"auto"``: CUDA if available). The base
        network is moved there.
    """

    noise: Noise

    def __init__(
        self,
        base: nn.Module,
        num_classes: int,
        sigma: float,
        *,
        seed: int = 0,
        batch_size: int = 1000,
        device: str | torch.device | None = None,
    ):
        if type(self) is Smooth:
            raise TypeError("use WassersteinSmoothing or LaplaceSmoothing")
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        check_positive("sigma", sigma)
        check_address(seed, (0, 0), (0, 0))
        self._check_batch_size(batch_size)
        self.device = resolve_device(device)
        self.base = base.to(self.device).eval()
        self.num_classes = num_classes
        self.sigma = float(sigma)
        self.seed = seed
        self.batch_size = batch_size
        self._buffer: torch.Tensor | None = None  # noisy copies, reused across calls

    @staticmethod
    def _check_batch_size(batch_size: int) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")

    # --- the paper's procedures ------------------------------------------------------------

    def predict(
        self,
        x: torch.Tensor,
        n: int,
        alpha: float,
        *,
        index: int,
        batch_size: int | None = None,
        progress: Progress | None = None,
    ) -> int:
        """Cohen et al.'s PREDICT: the top class, or ``-1`` (abstain) if it is not significant.

        Draws copies ``[0, n)`` of image ``index`` and runs a two-sided binomial test of the
        top-two counts (``scipy.stats.binomtest``, p = 1/2); abstains when its p-value exceeds
        ``alpha`` (in (0, 1/2), as for :meth:`certify`).
        """
        check_alpha(alpha)
        _check_samples("n", n)
        counts = self.sample_counts(x, n, index=index, batch_size=batch_size, progress=progress)
        top2 = np.argsort(counts, kind="stable")[::-1][:2]
        n_a, n_b = int(counts[top2[0]]), int(counts[top2[1]])
        from scipy.stats import binomtest  # about a second to import: only when used

        if n_a + n_b == 0 or binomtest(n_a, n_a + n_b, 0.5).pvalue > alpha:
            return ABSTAIN
        return int(top2[0])

    def certify(
        self,
        x: torch.Tensor,
        n0: int,
        n: int,
        alpha: float,
        *,
        index: int,
        batch_size: int | None = None,
        ground: Ground | str = Ground.L1,
        convention: Convention | str = Convention.COHEN,
        progress: Progress | None = None,
    ) -> tuple[int, float, float]:
        """Cohen et al.'s CERTIFY with the radius of Theorem 1 / Corollaries 1 and 3.

        Copies ``[0, n0)`` of image ``index`` pick the guess ``c_A``; copies ``[n0, n0 + n)``
        give a one-sided Clopper-Pearson lower bound ``p_A`` on P(f(noisy x) = c_A) at level
        ``alpha``; the radius is :func:`wbench.certification.certified_radius` of ``p_A`` (a W1
        radius in units of normalised mass). Under ``convention="cohen"`` the classifier
        abstains (prediction ``-1``, radius 0) when ``p_A < 1/2``; under ``"authors"`` it
        never abstains.

        Parameters
        ----------
        x : torch.Tensor
            One image ``(C, H, W)`` or ``(1, C, H, W)``: finite, non-negative, positive mass.
        n0, n : int
            Selection and estimation samples, each >= 1 (``n0 + n < 2**32``).
        alpha : float
            Significance level, in (0, 1/2).
        index : int
            The image's data-set index, in [0, 2**32): its noise stream.
        progress : callable, optional
            Called with the number of copies classified, once per sub-batch of either round.

        Returns
        -------
        prediction : int
            ``c_A``, or ``-1`` when abstaining.
        p_lower : float
            The lower confidence bound on ``p_A``.
        radius : float
            Certified W1 radius (0 when ``p_A <= 1/2``).
        """
        check_alpha(alpha)
        _check_samples("n0", n0)
        _check_samples("n", n)
        ground = parse_option(Ground, ground, "ground")
        convention = parse_option(Convention, convention, "convention")
        x, scale = self._prepare(x)  # validated once for both sampling rounds
        guess = int(np.argmax(self._counts(x, scale, index, 0, n0, batch_size, progress)))
        n_a = int(self._counts(x, scale, index, n0, n, batch_size, progress)[guess])
        p_lower = lower_confidence_bound(n_a, n, alpha)
        prediction = apply_convention(guess, p_lower, convention)
        radius = certified_radius(p_lower, self.sigma, self.noise, ground) if prediction != ABSTAIN else 0.0
        return prediction, p_lower, float(radius)

    # --- Monte Carlo ---------------------------------------------------------------------

    def sample_counts(
        self,
        x: torch.Tensor,
        num: int,
        *,
        index: int,
        first_copy: int = 0,
        batch_size: int | None = None,
        progress: Progress | None = None,
    ) -> np.ndarray:
        """Class counts of the base classifier on copies ``[first_copy, first_copy + num)`` of an image.

        Parameters
        ----------
        x : torch.Tensor
            One image ``(C, H, W)`` or ``(1, C, H, W)``: finite, non-negative, positive mass.
        num : int
            Number of noise draws (>= 0).
        index : int
            The image's data-set index: copy ``k`` is the stream's copy ``k`` under
            ``(seed, index)`` (:mod:`wbench.noise_stream`), whatever the sub-batch size.
        batch_size : int, optional
            Copies per forward pass (default: the constructor's).
        progress : callable, optional
            Called with the number of copies classified, once per sub-batch.

        Returns
        -------
        numpy.ndarray
            int64 counts of shape ``(num_classes,)``.

        Raises
        ------
        ValueError
            On invalid input, noise that under- or overflows the image's dtype
            (:func:`wbench.noise.noise_scale`), or non-finite scores from the base network.
        """
        if not isinstance(num, int) or num < 0:
            raise ValueError(f"number of samples must be a non-negative integer, got {num!r}")
        return self._counts(*self._prepare(x), index, first_copy, num, batch_size, progress)

    def _counts(
        self,
        x: torch.Tensor,
        scale: torch.Tensor,
        index: int,
        first: int,
        num: int,
        batch_size: int | None,
        progress: Progress | None,
    ) -> np.ndarray:
        """Counts on copies ``[first, first + num)`` of an image checked by :meth:`_prepare`."""
        check_address(self.seed, (index, index + 1), (first, first + num))
        batch_size = self.batch_size if batch_size is None else batch_size
        self._check_batch_size(batch_size)
        counts = torch.zeros(self.num_classes, dtype=torch.int64, device=self.device)
        non_finite = torch.zeros((), dtype=torch.bool, device=self.device)
        out = self._buffer_for(x, min(batch_size, max(num, 1)))
        index_t = torch.full((out.shape[0],), index, dtype=torch.int64, device=self.device)
        with torch.inference_mode():
            for lo in range(first, first + num, batch_size):
                b = min(batch_size, first + num - lo)
                copies = torch.arange(lo, lo + b, dtype=torch.int64, device=self.device)
                noisy = noisy_copies(
                    x, scale, seed=self.seed, index=index_t[:b], copy=copies,
                    tag=Tag.SMOOTHING, noise=self.noise, out=out[:b],
                )  # fmt: skip
                scores = self.base(noisy)
                if scores.ndim != 2 or scores.shape[1] != self.num_classes:
                    raise ValueError(
                        f"base classifier returned scores of shape {tuple(scores.shape)}, "
                        f"expected ({b}, {self.num_classes})"
                    )
                non_finite |= ~torch.isfinite(scores).all()
                counts += torch.bincount(scores.argmax(1), minlength=self.num_classes)
                if progress is not None:
                    progress(b)
        if bool(non_finite):
            raise ValueError(
                f"the base classifier returned non-finite scores (NaN or inf) on noisy copies of "
                f"image {index}; counts would be meaningless"
            )
        return counts.cpu().numpy()

    def _buffer_for(self, x: torch.Tensor, capacity: int) -> torch.Tensor:
        shape = (capacity, *x.shape[1:])
        buf = self._buffer
        if buf is None or tuple(buf.shape) != shape or buf.dtype != x.dtype or buf.device != x.device:
            self._buffer = buf = torch.empty(shape, dtype=x.dtype, device=x.device)
        return buf

    def _prepare(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The image as ``(1, C, H, W)`` on the device, validated, and its noise scale ``(1,)``."""
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
        return x, noise_scale(x, self.sigma)


class WassersteinSmoothing(Smooth):
    """Wasserstein smoothing (Levine & Feizi, Eq. 33): i.i.d. Laplace flow plans, std ``sigma``."""

    noise = Noise.WASSERSTEIN


class LaplaceSmoothing(Smooth):
    """The Laplace baseline: i.i.d. Laplace pixel noise of std ``sigma`` on ``x / mass``."""

    noise = Noise.LAPLACE


def _check_samples(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < UINT32:
        raise ValueError(f"{name} must be an integer in [1, 2**32), got {value!r}")
