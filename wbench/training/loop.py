"""The training loop: checkpoints every epoch, exact resume, metrics on disk.

``<out_dir>/checkpoint.pt`` (written atomically after every epoch, loadable with
``weights_only=True``) holds the model, optimiser, scheduler, the config, the
environment record, per-epoch metrics and every random state in use, so a run
interrupted after epoch k and resumed ends with the same weights as an
uninterrupted run (on the CPU; cuDNN kernels may be non-deterministic on CUDA).
``<out_dir>/metrics.json`` mirrors the metrics.

Random streams, all derived from ``config.seed``: model initialisation (the global
torch RNG), the shuffling order of each epoch, augmentation (a generator on the training
device, saved in the checkpoint), and the smoothing noise of :mod:`wbench.noise_stream`:
training noise keyed by the global step (row ``r`` of a batch takes copy ``r``), the noisy
test accuracy keyed by the epoch (test image ``t`` takes copy ``t``), so noise never depends
on the device, the build or on how a run was interrupted, and evaluation never perturbs
training.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from wbench import distributed as dist
from wbench.data import ImageTensorDataset, dataset_info, load_dataset
from wbench.models import build_model
from wbench.noise import perturb
from wbench.noise_stream import Tag
from wbench.runio import (
    atomic_torch_save,
    atomic_write_json,
    environment_record,
    load_checkpoint,
)
from wbench.training import ddp
from wbench.training.config import TrainConfig
from wbench.training.step import random_crop_flip, train_step

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.json"

# Config fields that may change when a run is resumed; all others must match the checkpoint.
RESUMABLE_CHANGES = ("epochs", "device", "out_dir", "num_workers", "data_root", "download", "eval_batch_size")

_STREAMS = {"augment": 2, "shuffle": 3}


def derive_seed(seed: int, stream: str, epoch: int = 0, *, per_rank: bool = False) -> int:
    """An independent 63-bit seed for one random stream (``numpy.random.SeedSequence``).

    With ``per_rank`` under torchrun, rank r gets the child stream with spawn key ``(r,)``, so ranks
    never share augmentation draws; in a single process the seed is the same either way.
    """
    key = (dist.rank(),) if per_rank and dist.active() else ()
    sequence = np.random.SeedSequence([seed, _STREAMS[stream], epoch], spawn_key=key)
    state = sequence.generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


class _BatchView(Dataset):
    """Index a data set with a whole batch of indices at once (``get_batch`` when it has one)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(self.dataset, ImageTensorDataset):
            return self.dataset.get_batch(indices)
        items = [self.dataset[int(i)] for i in indices]
        return torch.stack([x for x, _ in items]), torch.as_tensor([y for _, y in items], dtype=torch.int64)


def _batches(n: int, batch_size: int, generator: torch.Generator | None) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    return list(order.split(batch_size))


def _loader(dataset: Dataset, batches: list[torch.Tensor], config: TrainConfig, device: torch.device):
    return DataLoader(
        _BatchView(dataset),
        batch_size=None,
        sampler=batches,
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
    )


def _limit(dataset: Dataset, n: int | None) -> Dataset:
    if n is None or n >= len(dataset):
        return dataset
    if isinstance(dataset, ImageTensorDataset):
        return dataset.subset(n)
    return torch.utils.data.Subset(dataset, range(n))


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    dataset: Dataset,
    config: TrainConfig,
    device: torch.device,
    *,
    noise_epoch: int | None = None,
) -> float:
    """Accuracy on ``dataset``: clean, or under one noise draw per image (keyed by ``noise_epoch``)."""
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=device)
    first = 0
    for xb, yb in _loader(dataset, _batches(len(dataset), config.eval_batch_size, None), config, device):
        xb = xb.to(device, non_blocking=True)
        yb = yb.to(device, non_blocking=True)
        if noise_epoch is not None:
            xb = perturb(
                xb, config.sigma, config.noise, seed=config.seed, index=noise_epoch,
                first_copy=first, tag=Tag.EVALUATION, check=False,
            )  # fmt: skip
        first += int(yb.shape[0])
        correct += (model(xb).argmax(dim=1) == yb).sum()
    return int(correct) / len(dataset)


def _evaluate_epoch(
    model: torch.nn.Module, test_set: Dataset, config: TrainConfig, device: torch.device, epoch: int
) -> tuple[float, float | None]:
    """Clean test accuracy and, with noise, the accuracy under one draw per image (keyed by the epoch)."""
    test_acc = evaluate(model, test_set, config, device)
    if config.noise == "none":
        return test_acc, None
    return test_acc, evaluate(model, test_set, config, device, noise_epoch=epoch)


def _rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    return {
        "cpu": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        **{name: g.get_state() for name, g in generators.items()},
    }


def _restore_rng(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(state["cpu"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, g in generators.items():
        g.set_state(state[name])


def _check_resumable(ckpt: dict[str, Any], config: TrainConfig, device: torch.device, path: Path) -> None:
    saved = dict(ckpt["config"])
    now = config.to_dict()
    diff = sorted(
        k for k in set(saved) | set(now) if k not in RESUMABLE_CHANGES and saved.get(k) != now.get(k)
    )
    if diff:
        details = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {now.get(k)!r}" for k in diff)
        raise ValueError(f"cannot resume {path}: the config differs ({details})")
    saved_world = int(ckpt.get("world_size", 1))
    if saved_world != dist.world_size():
        raise ValueError(
            f"cannot resume {path}: it was trained by {saved_world} process(es), each with its own "
            f"random state; resume it with {saved_world} (torchrun --nproc-per-node, --nnodes), "
            f"not {dist.world_size()}"
        )
    if ckpt["device_type"] != device.type:
        raise ValueError(
            f"cannot resume {path}: it was trained on {ckpt['device_type']!r} and its augmentation generator "
            f"state cannot move to {device.type!r}; pass --device {ckpt['device_type']}"
        )


def train(config: TrainConfig, *, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train a classifier as ``config`` says; checkpoint and write metrics after every epoch.

    Parameters
    ----------
    config : TrainConfig
        The run (validated again here).
    resume : bool
        Continue from ``<out_dir>/checkpoint.pt`` if it exists (the config must match except
        for :data:`RESUMABLE_CHANGES`; ``epochs`` may grow). Without it, an existing
        checkpoint is an error rather than being overwritten.
    progress : bool
        Show a tqdm bar per epoch with the running loss and accuracy.

    Returns
    -------
    dict
        ``checkpoint`` and ``metrics`` (paths), ``test_accuracy`` (clean, final epoch),
        ``test_accuracy_noisy`` (one noise draw per test image; ``None`` without noise),
        ``epochs`` (completed), ``seconds`` (training time summed over resumes), ``device``,
        ``model``, ``dataset``.

    Raises
    ------
    ValueError
        If another run holds ``config.out_dir`` (:func:`wbench.runio.locked_output`), the
        checkpoint exists without ``resume``, or it cannot be resumed with ``config``.
    """
    config.validate()
    dist.agree("training settings", {**config.to_dict(), "resume": resume})
    with dist.output_lock(config.out_dir):
        return _train_in_locked_folder(config, resume=resume, progress=progress)


def _train_in_locked_folder(config: TrainConfig, *, resume: bool, progress: bool) -> dict[str, Any]:
    from tqdm.auto import tqdm

    device = dist.local_device(config.device)
    batch_size = ddp.rank_batch_size(config.batch_size)
    out_dir = Path(config.out_dir)
    ckpt_path = out_dir / CHECKPOINT_NAME
    metrics_path = out_dir / METRICS_NAME
    if ckpt_path.exists() and not resume:
        raise ValueError(
            f"{ckpt_path} exists; pass resume=True (--resume) to continue it, or choose another out_dir"
        )

    info = dataset_info(config.dataset)
    train_set = _limit(
        load_dataset(config.dataset, "train", config.data_root, config.download), config.limit_train
    )
    test_set = _limit(load_dataset(config.dataset, "test", config.data_root, False), config.limit_test)

    model_name = config.model_name
    model_kwargs = {"num_classes": int(info["num_classes"]), "in_channels": int(info["shape"][0])}
    torch.manual_seed(config.seed)
    model = build_model(model_name, **model_kwargs).to(device)
    _check_model_fits(model, info["shape"], model_name, config.dataset, device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(config.milestones), gamma=config.gamma)
    generators = {
        "augment": torch.Generator(device=device).manual_seed(
            derive_seed(config.seed, "augment", per_rank=True)
        ),
    }

    start_epoch, metrics, seconds_before = 0, [], 0.0
    if resume and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, map_location="cpu")  # RNG states must stay on the CPU
        _check_resumable(ckpt, config, device, ckpt_path)
        model.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        _restore_rng(ckpt["rng"] if dist.world_size() == 1 else ckpt["rng"][dist.rank()], generators)
        start_epoch, metrics = int(ckpt["epoch"]), list(ckpt["metrics"])
        seconds_before = float(sum(m["seconds"] for m in metrics))

    net = ddp.wrap(model, device)
    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        model.train()
        batches = ddp.epoch_batches(len(train_set), batch_size, derive_seed(config.seed, "shuffle"), epoch)
        if batches is None:
            shuffle = torch.Generator().manual_seed(derive_seed(config.seed, "shuffle", epoch))
            batches = _batches(len(train_set), batch_size, shuffle)
        loader = _loader(train_set, batches, config, device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        seen = 0
        show = progress and dist.is_main()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not show, leave=False)
        for step, (xb, yb) in enumerate(bar):
            xb = xb.to(device, non_blocking=True)
            yb = yb.to(device, non_blocking=True)
            if config.augment:
                xb = random_crop_flip(xb, generators["augment"])
            loss, n_correct = train_step(
                net,
                optimizer,
                xb,
                yb,
                noise=config.noise,
                sigma=config.sigma,
                seed=config.seed,
                step=epoch * len(batches) + step,
                first_copy=dist.rank() * batch_size,  # ranks draw disjoint copies of the step's noise
                shared_noise=config.shared_noise,
                check_input=(step == 0),
                penalty=config.penalty,
                eta=config.eta,
                radius=config.radius,
            )
            loss_sum += loss.to(torch.float64) * yb.shape[0]
            correct += n_correct
            seen += int(yb.shape[0])
            if show and (step % 10 == 0):
                bar.set_postfix(loss=f"{float(loss_sum) / seen:.4f}", acc=f"{int(correct) / seen:.3f}")
        bar.close()
        loss_sum, correct, seen = ddp.sum_over_ranks(loss_sum, correct, seen)
        train_loss = float(loss_sum) / seen
        if not np.isfinite(train_loss):
            raise ValueError(
                f"training diverged at epoch {epoch + 1} (loss {train_loss}); lower lr, sigma or eta"
            )
        lr = float(optimizer.param_groups[0]["lr"])
        scheduler.step()
        test_acc, noisy_acc = dist.on_main(_evaluate_epoch, model, test_set, config, device, epoch)
        metrics.append(
            {
                "epoch": epoch + 1,
                "lr": lr,
                "train_loss": train_loss,
                "train_acc": int(correct) / seen,
                "test_acc": test_acc,
                "test_acc_noisy": noisy_acc,
                "seconds": time.perf_counter() - t0,
            }
        )
        rng = dist.all_gather(_rng_state(generators))
        dist.on_main(
            _save,
            ckpt_path,
            metrics_path,
            model,
            optimizer,
            scheduler,
            config,
            model_name,
            model_kwargs,
            device,
            metrics,
            rng[0] if len(rng) == 1 else rng,
        )
        if show:
            m = metrics[-1]
            tqdm.write(
                f"epoch {m['epoch']}/{config.epochs}: loss {m['train_loss']:.4f} train acc "
                f"{m['train_acc']:.4f} test acc {m['test_acc']:.4f}"
                + ("" if noisy_acc is None else f" (noisy {noisy_acc:.4f})")
            )

    if not metrics:
        raise ValueError(f"{ckpt_path} holds no completed epoch")
    return {
        "checkpoint": str(ckpt_path),
        "metrics": str(metrics_path),
        "test_accuracy": metrics[-1]["test_acc"],
        "test_accuracy_noisy": metrics[-1]["test_acc_noisy"],
        "epochs": int(metrics[-1]["epoch"]),
        "seconds": seconds_before + sum(m["seconds"] for m in metrics[start_epoch:]),
        "device": str(device),
        "model": model_name,
        "dataset": config.dataset,
    }


def _check_model_fits(
    model: torch.nn.Module, shape: tuple[int, ...], name: str, dataset: str, device
) -> None:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros((1, *shape), device=device))
    except RuntimeError as exc:
        raise ValueError(
            f"model {name!r} does not accept {dataset!r} images of shape {tuple(shape)}: {exc}"
        ) from exc
    finally:
        model.train(was_training)


def _save(
    ckpt_path,
    metrics_path,
    model,
    optimizer,
    scheduler,
    config,
    model_name,
    model_kwargs,
    device,
    metrics,
    rng,
) -> None:
    epoch = int(metrics[-1]["epoch"])
    ckpt = {
        "model_name": model_name,
        "model_kwargs": dict(model_kwargs),
        "state_dict": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": epoch,
        "config": config.to_dict(),
        "seed": int(config.seed),
        "device_type": device.type,
        "environment": environment_record(),
        "metrics": [dict(m) for m in metrics],
        "world_size": dist.world_size(),
        "rng": rng,  # one state per rank (a list) under torchrun
    }
    atomic_torch_save(ckpt, ckpt_path)
    atomic_write_json(
        metrics_path, {"config": config.to_dict(), "epochs_completed": epoch, "metrics": metrics}
    )
