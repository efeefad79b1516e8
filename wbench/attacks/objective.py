"""What an attack maximises and how its success is decided: the base network or a smoothed classifier.

- Base network: the cross-entropy loss (Wong et al.; Wu et al.), success when the arg-max class
  differs from the label.
- Smoothed classifier (Levine & Feizi, Eq. 33): the negative log of the noise-averaged softmax
  probability of the label, ``-log mean_k softmax(f(noisy_k(x)))_y`` over ``noise_samples`` draws
  of :func:`wbench.noise.perturb` (differentiable in ``x``), as the authors' ``smooth_pgd``
  (``soft_wass_smooth_forward`` with 128 samples). Success is decided by Cohen et al.'s PREDICT
  of the smoothing instance; an abstention is not a flip.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class Objective:
    """Loss to ascend and the classifier's decision, for the base network."""

    def __init__(self, model: nn.Module):
        self.model = model

    def loss(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-example cross-entropy, differentiable in ``x`` (``(B, C, H, W)`` in mass units), and the
        examples that this same forward pass already misclassifies (``None`` when unknown)."""
        scores = self.model(x)
        return F.cross_entropy(scores, labels, reduction="none"), scores.detach().argmax(1) != labels

    def decide(self, x: torch.Tensor) -> np.ndarray:
        """The classifier's final prediction per image (int64; ``-1`` = abstain)."""
        with torch.no_grad():
            return self.model(x).argmax(1).cpu().numpy().astype(np.int64)


class SmoothedObjective(Objective):
    """The noise-averaged loss of a smoothed classifier; decisions by its PREDICT.

    Parameters
    ----------
    smoothing : wbench.smoothing.Smooth
        A :class:`~wbench.WassersteinSmoothing` or :class:`~wbench.LaplaceSmoothing` instance.
    noise_samples : int
        Noise draws per gradient (the authors' ``num_samples = 128``).
    predict_n, predict_alpha : int, float
        PREDICT's sample count and level (the authors' ``num_samples_test = 10000``, ``alphaprob = 0.05``).
    generator : torch.Generator
        Seeded generator for the gradient's noise (PREDICT uses the instance's own generator).
    """

    def __init__(
        self,
        smoothing,
        *,
        noise_samples: int,
        predict_n: int,
        predict_alpha: float,
        generator: torch.Generator,
    ):
        super().__init__(smoothing.base)
        self.smoothing = smoothing
        self.noise_samples = noise_samples
        self.predict_n = predict_n
        self.predict_alpha = predict_alpha
        self.generator = generator

    def loss(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, None]:
        from wbench.noise import perturb

        k = self.noise_samples
        noisy = perturb(
            x.repeat_interleave(k, 0),
            self.smoothing.sigma,
            self.smoothing.noise,
            generator=self.generator,
            check=False,
        )
        log_p = F.log_softmax(self.model(noisy), dim=1).view(x.shape[0], k, -1)
        log_mean = torch.logsumexp(log_p, dim=1) - math.log(k)  # log of the mean softmax, stably
        return -log_mean.gather(1, labels[:, None]).squeeze(1), None  # only PREDICT decides, at the end

    def decide(self, x: torch.Tensor) -> np.ndarray:
        return np.array(
            [self.smoothing.predict(xi, self.predict_n, self.predict_alpha) for xi in x], dtype=np.int64
        )


def frozen_update(done: torch.Tensor, active: torch.Tensor, fooled: torch.Tensor | None) -> torch.Tensor:
    """Mark the ``active`` examples that are ``fooled`` as done (in place): they keep their current
    iterate (the first that fooled the network, as Wong et al.). Returns the mask over ``active``
    of the examples that move on."""
    if fooled is None:
        return torch.ones_like(active, dtype=torch.bool)
    done[active] |= fooled
    return ~fooled
