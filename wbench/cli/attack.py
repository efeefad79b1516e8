"""``wbench attack``: empirical robustness of a model against Wasserstein attacks (resumable)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "attack",
        help="attack images within W1 budgets (flow, sinkhorn, frank_wolfe); CSV, JSON summary, plots",
        description="Attack a base network or its smoothed classifier at each W1 budget (normalised mass, "
        "the units of certified radii). Writes OUT/attack.csv (one row per image and budget, resumable), "
        "OUT/summary.json, OUT/robust_accuracy.png (with --certify-dir's certified curve) and "
        "OUT/examples.png. Under torchrun the ranks share the batches (see the README's Scale-out section); "
        "use the full flag names there (--num-samples, --max-images), as torchrun refuses abbreviations "
        "of its own options.",
    )
    p.add_argument("checkpoint", help="checkpoint.pt written by `wbench train`")
    p.add_argument("--method", required=True, help="flow | sinkhorn | frank_wolfe")
    p.add_argument("--eps", required=True, help="comma-separated W1 budgets in normalised mass")
    p.add_argument("--out", required=True, help="output folder (rerun with the same folder to resume)")
    p.add_argument("--smoothing", default=None, help="wasserstein | laplace: attack the smoothed classifier")
    p.add_argument("--sigma", type=float, default=None, help="smoothing noise std (normalised mass)")
    p.add_argument("--certify-dir", default=None, help="a `wbench certify` folder of the same checkpoint")
    p.add_argument("--ground", default="l1", help="ground metric of W1: l1 | l2")
    p.add_argument("--steps", type=int, default=None, help="attack iterations (default: the method's preset)")
    p.add_argument("--preset", default=None, help="sinkhorn only: mnist | cifar (Wong et al.'s settings)")
    p.add_argument(
        "--dataset", default=None, help="digits | mnist5k | mnist | cifar10 (default: the checkpoint's)"
    )
    p.add_argument("--split", default="test", help="train | test (default: test)")
    p.add_argument("--data-root", default=None, help="folder holding MNIST / CIFAR-10")
    p.add_argument(
        "--indices", default=None, help="'3,5,9' or 'start:stop[:step]' (default: the whole split)"
    )
    p.add_argument(
        "--max-images", "--max", type=int, default=None, dest="max_count", help="attack at most N images"
    )
    p.add_argument("--skip", type=int, default=1, help="take every SKIP-th index (default 1)")
    p.add_argument("--batch", type=int, default=16, help="images per attack batch (default 16)")
    p.add_argument(
        "--num-samples", "--n", type=int, default=10000, dest="n", help="PREDICT samples (smoothed)"
    )
    p.add_argument("--alpha", type=float, default=0.05, help="PREDICT level (smoothed, default 0.05)")
    p.add_argument("--noise-samples", type=int, default=128, help="noise draws per gradient (smoothed)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run, distributed=True)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from wbench.data import dataset_info, load_dataset
    from wbench.dataset_attack import AttackSettings, attack_dataset, parse_eps_list
    from wbench.dataset_certification import file_sha256, parse_indices
    from wbench.distributed import is_main, local_device
    from wbench.models import load_model

    eps_list = parse_eps_list(args.eps)
    if args.preset is not None and args.method != "sinkhorn":
        raise ValueError("--preset applies to --method sinkhorn only")
    settings = AttackSettings(
        method=args.method, ground=args.ground, steps=args.steps, seed=args.seed, smoothing=args.smoothing,
        sigma=args.sigma, noise_samples=args.noise_samples, predict_n=args.n, predict_alpha=args.alpha,
        batch_size=args.batch, method_options={"preset": args.preset} if args.preset else {},
    )  # fmt: skip
    device = local_device(args.device)
    model, ckpt = load_model(args.checkpoint, device)
    dataset = args.dataset or (ckpt.get("config") or {}).get("dataset")
    if dataset is None:
        raise ValueError("the checkpoint does not name its data set; pass --dataset")
    data = load_dataset(dataset, args.split, root=args.data_root, download=False)
    indices = parse_indices(args.indices, len(data), max_count=args.max_count, skip=args.skip)
    source = {"checkpoint_sha256": file_sha256(args.checkpoint), "dataset": dataset, "split": args.split}
    summary = attack_dataset(
        model, data, indices, eps_list, settings, args.out, num_classes=dataset_info(dataset)["num_classes"],
        device=device, source=source, certify_dir=args.certify_dir, progress=not args.no_progress,
    )  # fmt: skip
    if not is_main():
        return 0  # rank 0 reports the whole launch
    print(f"attacked {summary['images']} images with {settings.method} ({settings.ground} ground):")
    cert = summary.get("certified")
    for k, p in enumerate(summary["per_eps"]):
        extra = f", certified accuracy {cert['certified_accuracy_at_eps'][k]:.3f}" if cert else ""
        print(
            f"  eps {p['eps']:.4g} (pixel mass {p['eps'] * summary['mean_image_mass']:.3g}): "
            f"empirical robust accuracy {p['robust_accuracy']:.3f}, flips {p['successes']}, "
            f"abstentions {p['abstentions']}{extra}"
        )
    out = Path(args.out)
    print(
        f"wrote {out / 'attack.csv'}, {out / 'summary.json'}, {out / 'robust_accuracy.png'}, "
        f"{out / 'examples.png'}"
    )
    return 0
