"""One optimisation step for each training mode, and batch augmentation.

Modes:

* clean: cross-entropy on the batch;
* noise (Levine & Feizi, Appendix B): cross-entropy on one draw of the smoothing noise
  per image, ``wbench.noise.perturb`` (flow-space Laplace noise, Eq. 33, or the i.i.d.
  Laplace pixel baseline), in mass space;
* penalty (Lin et al., Appendix D): ``CE + eta**2 * ||grad_x CE||^2`` in the Euclidean or
  the Wasserstein metric (Eq. 7), from :func:`wbench.penalties.gradient_penalty_loss`.

Nothing here synchronises with the device: the loss and the number of correct
predictions come back as tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wbench.noise import perturb
from wbench.options import Noise, PenaltyMetric, TrainingNoise, TrainingPenalty, parse_option


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    noise: TrainingNoise | str = TrainingNoise.NONE,
    sigma: float | None = None,
    seed: int = 0,
    step: int = 0,
    first_copy: int = 0,
    shared_noise: bool = False,
    check_input: bool = False,
    penalty: TrainingPenalty | str = TrainingPenalty.NONE,
    eta: float | None = None,
    radius: float = 2.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, backward and ``optimizer.step()`` on one batch.

    Parameters
    ----------
    model, optimizer
        The network (in train mode) and its optimiser.
    x, y : torch.Tensor
        Images ``(B, C, H, W)`` in pixel/mass space and labels ``(B,)``, on the model's device.
    noise : {"none", "wasserstein", "laplace"}
        Smoothing noise of std ``sigma``: row ``r`` of the batch takes copy ``first_copy + r`` of
        the stream ``(seed, step)`` (:func:`wbench.noise.perturb`; one draw for the batch if
        ``shared_noise``). A data-parallel rank ``q`` with local batch ``B`` passes ``q * B``.
        ``check_input`` validates ``x`` (a device sync: first batch only).
    penalty : {"none", "euclidean", "wasserstein"}
        Gradient-norm penalty with strength ``eta`` and graph ``radius``.

    Returns
    -------
    (loss, correct)
        The batch's training objective (detached) and the number of correct predictions
        on the images the network saw, as 0-d tensors on the device.
    """
    noise = parse_option(TrainingNoise, noise, "noise")
    penalty = parse_option(TrainingPenalty, penalty, "penalty")
    if noise is not TrainingNoise.NONE:
        x = perturb(
            x, sigma, Noise(noise), seed=seed, index=step, first_copy=first_copy,
            shared_across_batch=shared_noise, check=check_input,
        )  # fmt: skip
    optimizer.zero_grad(set_to_none=True)
    if penalty is TrainingPenalty.NONE:
        logits = model(x)
        loss = F.cross_entropy(logits, y)
    else:
        from wbench.penalties import gradient_penalty_loss

        captured: list[torch.Tensor] = []
        handle = model.register_forward_hook(lambda _m, _i, out: captured.append(out.detach()))
        try:
            loss, _data_loss, _pen = gradient_penalty_loss(
                model, x, y, eta, metric=PenaltyMetric(penalty), radius=radius
            )
        finally:
            handle.remove()
        logits = captured[0]
    loss.backward()
    optimizer.step()
    correct = (logits.argmax(dim=1) == y).sum()
    return loss.detach(), correct


def random_crop_flip(
    x: torch.Tensor, generator: torch.Generator | None = None, padding: int = 4
) -> torch.Tensor:
    """Random crop after zero padding, then random horizontal flip, per image (Table 4 of Levine & Feizi).

    Zero padding adds no mass; cropping may drop some, as in the usual CIFAR pipeline.
    Runs batched on ``x.device`` with ``generator`` (on the same device).
    """
    b, _c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (2, b), generator=generator, device=x.device)
    flip = torch.rand(b, generator=generator, device=x.device) < 0.5
    rows = offsets[0][:, None] + torch.arange(h, device=x.device)[None, :]  # (B, H)
    cols = torch.arange(w, device=x.device)[None, :].expand(b, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols) + offsets[1][:, None]  # (B, W)
    bidx = torch.arange(b, device=x.device)[:, None, None, None]
    cidx = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[bidx, cidx, rows[:, None, :, None], cols[:, None, None, :]]
