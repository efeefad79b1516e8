"""Data-parallel training under torchrun: DistributedDataParallel, the sampler, per-rank seeds.

Nothing here changes a single-process run: without a process group :func:`wrap` returns the
model and :func:`epoch_batches` ``None`` (the loop's own shuffled batches).

Under torchrun:

* ``batch_size`` stays the global batch of one optimisation step: each of the W ranks takes
  ``batch_size / W`` images of it (so the papers' hyperparameters keep their meaning), drawn by a
  :class:`~torch.utils.data.DistributedSampler` whose epoch is set every epoch;
* gradients are averaged by :class:`~torch.nn.parallel.DistributedDataParallel`; batch-norm
  statistics stay per rank (no SyncBatchNorm), as in plain DDP;
* the smoothing noise of step s is the stream ``(seed, s)`` of :mod:`wbench.noise_stream`, and rank r
  takes its copies from ``r * batch_size / W`` on, so together the ranks draw exactly the copies one
  process draws for the global batch and no two ranks share a draw; ``shared_noise`` means one draw
  per rank and step. The augmentation generator of rank r is seeded with ``SeedSequence`` spawn key
  ``(r,)``.
"""

from __future__ import annotations

import torch
from torch import nn

from wbench import distributed as dist


def rank_batch_size(batch_size: int) -> int:
    """This rank's share of the global ``batch_size``.

    Raises
    ------
    ValueError
        If ``batch_size`` is not a multiple of the number of ranks.
    """
    world = dist.world_size()
    if batch_size % world:
        raise ValueError(
            f"--batch-size {batch_size} is the batch of one step over all {world} processes; "
            f"make it a multiple of {world}"
        )
    return batch_size // world


def epoch_batches(n: int, batch_size: int, shuffle_seed: int, epoch: int) -> list[torch.Tensor] | None:
    """This rank's batches of indices for ``epoch`` under torchrun (``None`` without a process group).

    A :class:`~torch.utils.data.DistributedSampler` over ``n`` images with seed ``shuffle_seed``
    and the epoch set, cut into batches of :func:`rank_batch_size`; every rank gets as many
    batches (the sampler pads the last round with repeated images).
    """
    if not dist.active():
        return None
    sampler = torch.utils.data.DistributedSampler(
        range(n), num_replicas=dist.world_size(), rank=dist.rank(), shuffle=True, seed=shuffle_seed
    )
    sampler.set_epoch(epoch)
    return list(torch.tensor(list(sampler), dtype=torch.int64).split(rank_batch_size(batch_size)))


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in :class:`~torch.nn.parallel.DistributedDataParallel` under torchrun, else itself."""
    if not dist.active():
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def sum_over_ranks(*values: float) -> list[float]:
    """Per-epoch counters (loss sum, correct, seen) summed over ranks."""
    return dist.all_sum([float(v) for v in values])
