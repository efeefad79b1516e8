"""``wbench train``: train a classifier with noise (Levine & Feizi) or a gradient penalty (Lin et al.)."""

from __future__ import annotations

import argparse

# CLI flag -> TrainConfig field, for every overridable option (None means "keep preset/default")
_FIELDS = (
    "dataset",
    "model",
    "data_root",
    "epochs",
    "batch_size",
    "lr",
    "momentum",
    "weight_decay",
    "milestones",
    "gamma",
    "noise",
    "sigma",
    "penalty",
    "eta",
    "radius",
    "seed",
    "device",
    "num_workers",
    "limit_train",
    "limit_test",
    "eval_batch_size",
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a classifier (clean, noise-smoothed, or gradient-penalised)",
        description="Train a classifier on digits or mnist5k (bundled), MNIST or CIFAR-10. Start from a "
        "--preset (levine_mnist, levine_cifar: Levine & Feizi Tables 3-4; levine_mnist5k: Table 3's "
        "network and optimiser on mnist5k with a CPU schedule; lin_cifar: Lin et al. App. D; "
        "digits_quick: a CPU run in seconds) and override any option. Writes OUT/checkpoint.pt and "
        "OUT/metrics.json after every epoch; --resume continues an interrupted run exactly. Under torchrun "
        "the processes train one model with DistributedDataParallel; --batch-size stays the batch of one "
        "step over all processes (see the README's Scale-out section).",
    )
    p.add_argument(
        "--preset",
        help="start from a preset: levine_mnist, levine_mnist5k, levine_cifar, lin_cifar, digits_quick",
    )
    p.add_argument("--dataset", help="digits (default), mnist5k, mnist or cifar10")
    p.add_argument(
        "--model", help="mnist_wong, cifar_resnet18, resnet20_softplus, digits_cnn (default: per dataset)"
    )
    p.add_argument(
        "--data-root", dest="data_root", metavar="DIR", help="folder holding MNIST/ or cifar-10-batches-py/"
    )
    p.add_argument(
        "--download", action="store_true", default=None, help="let torchvision download the data set"
    )
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--lr", type=float, help="initial SGD learning rate")
    p.add_argument("--momentum", type=float)
    p.add_argument("--weight-decay", dest="weight_decay", type=float)
    p.add_argument(
        "--milestones", type=int, nargs="*", metavar="EPOCH", help="epochs where lr is multiplied by gamma"
    )
    p.add_argument("--gamma", type=float, help="lr decay factor at each milestone")
    p.add_argument(
        "--noise", help="none, wasserstein (flow-space Laplace, Eq. 33) or laplace (pixel baseline)"
    )
    p.add_argument("--sigma", type=float, help="noise std in normalised mass")
    p.add_argument(
        "--shared-noise",
        dest="shared_noise",
        action="store_true",
        default=None,
        help="one noise draw per batch (the paper's shortcut) instead of one per image",
    )
    p.add_argument("--penalty", help="none, euclidean or wasserstein gradient-norm penalty")
    p.add_argument("--eta", type=float, help="penalty strength (eta**2 multiplies the squared norm)")
    p.add_argument("--radius", type=float, help="Wasserstein graph radius in pixels (default 2)")
    p.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="random crop (padding 4) and horizontal flip",
    )
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--num-workers", dest="num_workers", type=int)
    p.add_argument(
        "--limit-train", dest="limit_train", type=int, metavar="N", help="use the first N training images"
    )
    p.add_argument(
        "--limit-test", dest="limit_test", type=int, metavar="N", help="use the first N test images"
    )
    p.add_argument("--eval-batch-size", dest="eval_batch_size", type=int)
    p.add_argument("--out", dest="out_dir", metavar="DIR", help="output folder (default runs/train)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.set_defaults(func=run, distributed=True)


def config_from_args(args: argparse.Namespace):
    """The :class:`~wbench.training.TrainConfig` that ``args`` describe (preset, then overrides)."""
    from wbench.training import PRESETS, TrainConfig

    overrides = {}
    for name in (*_FIELDS, "download", "shared_noise", "augment", "out_dir"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = tuple(value) if name == "milestones" else value
    if args.preset is None:
        return TrainConfig.from_dict(overrides)
    if args.preset not in PRESETS:
        raise ValueError(f"unknown preset {args.preset!r}; expected one of {', '.join(map(repr, PRESETS))}")
    return TrainConfig.from_preset(args.preset, **overrides)


def run(args: argparse.Namespace) -> int:
    from wbench.distributed import is_main
    from wbench.training import train

    config = config_from_args(args)
    summary = train(config, resume=args.resume, progress=args.progress)
    if not is_main():
        return 0  # rank 0 reports the launch
    print(f"checkpoint: {summary['checkpoint']}")
    print(f"metrics:    {summary['metrics']}")
    line = f"{summary['dataset']} / {summary['model']}: {summary['epochs']} epochs on {summary['device']} in "
    line += f"{summary['seconds']:.1f} s; clean test accuracy {summary['test_accuracy']:.4f}"
    if summary["test_accuracy_noisy"] is not None:
        line += f", under {config.noise} noise (sigma={config.sigma:g}) {summary['test_accuracy_noisy']:.4f}"
    print(line)
    return 0
