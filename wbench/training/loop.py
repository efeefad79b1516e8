"""The training loop: checkpoints every epoch, exact resume, metrics on disk.

``<out_dir>/checkpoint.pt`` (written atomically after every epoch, loadable with
``weights_only=True``) holds the model, optimiser, scheduler, the config, the
environment record, per-epoch metrics and every random state in use, so a run
interrupted after epoch k and resumed ends with the same weights as an
uninterrupted run (on the CPU; cuDNN kernels may be non-deterministic on CUDA).
``<out_dir>/metrics.json`` mirrors the metrics.

Random streams, all derived from ``config.seed``: model initialisation (the global
torch RNG), the shuffling order of each epoch, augmentation and training noise
(generators on the training device, saved in the checkpoint), and the noise of the
noisy test accuracy of each epoch (derived per epoch, so evaluation never perturbs
training).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from wbench.data import ImageTensorDataset, dataset_info, load_dataset
from wbench.devices import resolve_device
from wbench.models import build_model
from wbench.noise import perturb
from wbench.runio import (
    atomic_torch_save,
    atomic_write_json,
    environment_record,
    load_checkpoint,
    locked_output,
)
from wbench.training.config import TrainConfig
from wbench.training.step import random_crop_flip, train_step

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.json"

# Config fields that may change when a run is resumed; all others must match the checkpoint.
RESUMABLE_CHANGES = ("epochs", "device", "out_dir", "num_workers", "data_root", "download", "eval_batch_size")

_STREAMS = {"noise": 1, "augment": 2, "shuffle": 3, "eval_noise": 4}


def derive_seed(seed: int, stream: str, epoch: int = 0) -> int:
    """An independent 63-bit seed for one random stream (``numpy.random.SeedSequence``)."""
    state = np.random.SeedSequence([seed, _STREAMS[stream], epoch]).generate_state(2, np.uint32)
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
    noise_generator: torch.Generator | None = None,
) -> float:
    """Accuracy on ``dataset``: clean, or under one noise draw per image when a generator is given."""
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for xb, yb in _loader(dataset, _batches(len(dataset), config.eval_batch_size, None), config, device):
        xb = xb.to(device, non_blocking=True)
        yb = yb.to(device, non_blocking=True)
        if noise_generator is not None:
            xb = perturb(
                xb,
                config.sigma,
                config.noise,
                generator=noise_generator,
                shared_across_batch=False,
                check=False,
            )
        correct += (model(xb).argmax(dim=1) == yb).sum()
    return int(correct) / len(dataset)


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
    if ckpt["device_type"] != device.type:
        raise ValueError(
            f"cannot resume {path}: it was trained on {ckpt['device_type']!r} and its noise generator "
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
    with locked_output(config.out_dir):
        return _train_in_locked_folder(config, resume=resume, progress=progress)


def _train_in_locked_folder(config: TrainConfig, *, resume: bool, progress: bool) -> dict[str, Any]:
    from tqdm.auto import tqdm

    device = resolve_device(config.device)
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
        "noise": torch.Generator(device=device).manual_seed(derive_seed(config.seed, "noise")),
        "augment": torch.Generator(device=device).manual_seed(derive_seed(config.seed, "augment")),
    }

    start_epoch, metrics, seconds_before = 0, [], 0.0
    if resume and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, map_location="cpu")  # RNG states must stay on the CPU
        _check_resumable(ckpt, config, device, ckpt_path)
        model.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        _restore_rng(ckpt["rng"], generators)
        start_epoch, metrics = int(ckpt["epoch"]), list(ckpt["metrics"])
        seconds_before = float(sum(m["seconds"] for m in metrics))

    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        model.train()
        shuffle = torch.Generator().manual_seed(derive_seed(config.seed, "shuffle", epoch))
        loader = _loader(train_set, _batches(len(train_set), config.batch_size, shuffle), config, device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        seen = 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress, leave=False)
        for step, (xb, yb) in enumerate(bar):
            xb = xb.to(device, non_blocking=True)
            yb = yb.to(device, non_blocking=True)
            if config.augment:
                xb = random_crop_flip(xb, generators["augment"])
            loss, n_correct = train_step(
                model,
                optimizer,
                xb,
                yb,
                noise=config.noise,
                sigma=config.sigma,
                generator=generators["noise"],
                shared_noise=config.shared_noise,
                check_input=(step == 0),
                penalty=config.penalty,
                eta=config.eta,
                radius=config.radius,
            )
            loss_sum += loss.to(torch.float64) * yb.shape[0]
            correct += n_correct
            seen += int(yb.shape[0])
            if progress and (step % 10 == 0):
                bar.set_postfix(loss=f"{float(loss_sum) / seen:.4f}", acc=f"{int(correct) / seen:.3f}")
        bar.close()
        train_loss = float(loss_sum) / seen
        if not np.isfinite(train_loss):
            raise ValueError(
                f"training diverged at epoch {epoch + 1} (loss {train_loss}); lower lr, sigma or eta"
            )
        lr = float(optimizer.param_groups[0]["lr"])
        scheduler.step()
        test_acc = evaluate(model, test_set, config, device)
        noisy_acc = None
        if config.noise != "none":
            g_eval = torch.Generator(device=device).manual_seed(derive_seed(config.seed, "eval_noise", epoch))
            noisy_acc = evaluate(model, test_set, config, device, noise_generator=g_eval)
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
        _save(
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
            generators,
        )
        if progress:
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
    generators,
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
        "rng": _rng_state(generators),
    }
    atomic_torch_save(ckpt, ckpt_path)
    atomic_write_json(
        metrics_path, {"config": config.to_dict(), "epochs_completed": epoch, "metrics": metrics}
    )
