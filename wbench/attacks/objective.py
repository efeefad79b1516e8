"""What an attack maximises and how its success is decided: the base network or a smoothed classifier.

- Base network: the cross-entropy loss (Wong et al.; Wu et al.), success when the arg-max class
  differs from the label.
- Smoothed classifier (Levine & Feizi, Eq. 33): the negative log of the noise-averaged softmax
  probability of the label, ``-log mean_k softmax(f(noisy_k(x)))_y`` over ``noise_samples`` draws
  of :func:`wbench.noise.noisy_copies` (differentiable in ``x``), as the authors' ``smooth_pgd``
  (``soft_wass_smooth_forward`` with 128 samples). Success is decided by Cohen et al.'s PREDICT
  of the smoothing instance; an abstention is not a flip. The gradient's noise comes from the
  ``TRAINING`` stream of the attack's seed, addressed by the image's data-set index and its draw
  count (so it does not depend on the batch), never from the ``SMOOTHING`` stream that PREDICT
  reads, so the attacker cannot tune itself to PREDICT's draws.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

Progress = Callable[[int], object]
"""A progress callback: called with the number of attack iterations just completed."""


class Objective:
    """Loss to ascend and the classifier's decision, for the base network."""

    def __init__(self, model: nn.Module):
        self.model = model

    def loss(
        self, x: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-example cross-entropy, differentiable in ``x`` (``(B', C, H, W)`` in mass units: the
        images ``rows`` of the attacked batch), and the examples that this same forward pass already
        misclassifies (``None`` when unknown)."""
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
    seed : int
        Seed of the gradient's noise stream (PREDICT uses the instance's own seed).
    indices : sequence of int
        Data-set index of each image: PREDICT of image ``b`` reads copies ``[0, predict_n)`` of
        ``indices[b]`` under the instance's seed.
    """

    def __init__(
        self, smoothing, *, noise_samples: int, predict_n: int, predict_alpha: float, seed: int, indices
    ):
        super().__init__(smoothing.base)
        self.smoothing = smoothing
        self.noise_samples = noise_samples
        self.predict_n = predict_n
        self.predict_alpha = predict_alpha
        self.seed = seed
        self.indices = [int(i) for i in indices]
        self.draws = np.zeros(len(self.indices), dtype=np.int64)  # gradients drawn so far, per image

    def loss(self, x: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, None]:
        from wbench.noise import noise_scale, noisy_copies
        from wbench.noise_stream import Tag, check_address

        k = self.noise_samples
        r = rows.cpu().numpy()
        index = torch.as_tensor(self.indices, dtype=torch.int64)[r].repeat_interleave(k)
        # copy j of gradient t of an image: t * k + j, whatever the batch it is attacked in
        copy = torch.as_tensor(self.draws[r] * k).repeat_interleave(k) + torch.arange(k).repeat(len(r))
        check_address(
            self.seed, (int(index.min()), int(index.max()) + 1), (int(copy.min()), int(copy.max()) + 1)
        )
        self.draws[r] += 1
        x_rep = x.repeat_interleave(k, 0)
        noisy = noisy_copies(
            x_rep, noise_scale(x_rep, self.smoothing.sigma, check=False), seed=self.seed,
            index=index.to(x.device), copy=copy.to(x.device), tag=Tag.TRAINING, noise=self.smoothing.noise,
        )  # fmt: skip
        log_p = F.log_softmax(self.model(noisy), dim=1).view(x.shape[0], k, -1)
        log_mean = torch.logsumexp(log_p, dim=1) - math.log(k)  # log of the mean softmax, stably
        return -log_mean.gather(1, labels[:, None]).squeeze(1), None  # only PREDICT decides, at the end

    def decide(self, x: torch.Tensor) -> np.ndarray:
        return np.array(
            [
                self.smoothing.predict(xi, self.predict_n, self.predict_alpha, index=i)
                for xi, i in zip(x, self.indices, strict=True)
            ],
            dtype=np.int64,
        )


def frozen_update(done: torch.Tensor, active: torch.Tensor, fooled: torch.Tensor | None) -> torch.Tensor:
    """Mark the ``active`` examples that are ``fooled`` as done (in place): they keep their current
    iterate (the first that fooled the network, as Wong et al.). Returns the mask over ``active``
    of the examples that move on."""
    if fooled is None:
        return torch.ones_like(active, dtype=torch.bool)
    done[active] |= fooled
    return ~fooled
