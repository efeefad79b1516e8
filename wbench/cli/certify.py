"""``wbench certify``: certify a data split with a smoothed classifier (resumable)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "certify",
        help="certify images with Wasserstein or Laplace smoothing (CSV, JSON summary, plot)",
        description="Cohen et al.'s CERTIFY with the radii of Levine & Feizi (Theorem 1, Corollaries 1 "
        "and 3). Writes OUT/certify.csv (one row per image, resumable), OUT/summary.json and "
        "OUT/certified_accuracy.png. Radii are W1 distances in units of normalised mass. Under torchrun the "
        "ranks share the images (see the README's Scale-out section); use the full flag names there "
        "(--num-samples, --max-images), as torchrun refuses abbreviations of its own options.",
    )
    p.add_argument("checkpoint", help="checkpoint.pt written by `wbench train`")
    p.add_argument("--out", required=True, help="output folder (rerun with the same folder to resume)")
    p.add_argument(
        "--dataset", default=None, help="digits | mnist5k | mnist | cifar10 (default: the checkpoint's)"
    )
    p.add_argument("--split", default="test", help="train | test (default: test)")
    p.add_argument(
        "--data-root", default=None, help="folder holding MNIST / CIFAR-10 (not for digits, mnist5k)"
    )
    p.add_argument(
        "--indices", default=None, help="'3,5,9' or 'start:stop[:step]' (default: the whole split)"
    )
    p.add_argument(
        "--max-images", "--max", type=int, default=None, dest="max_count", help="certify at most N images"
    )
    p.add_argument("--skip", type=int, default=1, help="take every SKIP-th index (default 1)")
    p.add_argument(
        "--sigma", type=float, default=None, help="noise std in normalised mass (default: the training sigma)"
    )
    p.add_argument("--noise", default=None, help="wasserstein | laplace (default: the training noise)")
    p.add_argument("--n0", type=int, default=1000, help="selection samples (default 1000, as the authors)")
    p.add_argument(
        "--num-samples", "--n", type=int, default=10000, dest="n",
        help="estimation samples n (default 10000, as the authors)",
    )  # fmt: skip
    p.add_argument("--alpha", type=float, default=0.05, help="failure probability (default 0.05)")
    p.add_argument("--batch", type=int, default=1000, help="noisy copies per forward pass (default 1000)")
    p.add_argument(
        "--ground", default=None,
        help="ground metric of W1: l1 | l2 (Corollary 3); default: l1, or l2 with --convention authors",
    )  # fmt: skip
    p.add_argument(
        "--convention", default="cohen",
        help="cohen (abstain if p_A < 1/2) | authors (the released code: no abstention, L2-ground radii)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--radii", default=None, help="comma-separated radius grid for the summary")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run, distributed=True)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from wbench.certify_run import (
        CertifySettings,
        certify_dataset,
        check_radius_grid,
        file_sha256,
        parse_indices,
    )
    from wbench.data import dataset_info, load_dataset
    from wbench.distributed import is_main, local_device
    from wbench.models import load_model

    device = local_device(args.device)
    model, ckpt = load_model(args.checkpoint, device)
    train_cfg = ckpt.get("config") or {}
    dataset = args.dataset or train_cfg.get("dataset")
    if dataset is None:
        raise ValueError("the checkpoint does not name its data set; pass --dataset")
    noise = args.noise or (train_cfg.get("noise") if train_cfg.get("noise") not in (None, "none") else None)
    if noise is None:
        raise ValueError("the checkpoint was trained without noise; pass --noise and --sigma")
    sigma = args.sigma if args.sigma is not None else train_cfg.get("sigma")
    if sigma is None:
        raise ValueError("pass --sigma (the checkpoint records none)")
    settings = CertifySettings(
        sigma=float(sigma), noise=noise, n0=args.n0, n=args.n, alpha=args.alpha, ground=args.ground,
        convention=args.convention, seed=args.seed, batch_size=args.batch,
    )  # fmt: skip
    data = load_dataset(dataset, args.split, root=args.data_root, download=False)
    indices = parse_indices(args.indices, len(data), max_count=args.max_count, skip=args.skip)
    radii = None
    if args.radii is not None:
        try:
            radii = check_radius_grid([float(r) for r in args.radii.split(",") if r.strip()])
        except ValueError as exc:
            raise ValueError(f"bad --radii {args.radii!r}: {exc}; use comma-separated radii >= 0") from exc
    source = {"checkpoint_sha256": file_sha256(args.checkpoint), "dataset": dataset, "split": args.split}
    summary = certify_dataset(
        model, data, indices, settings, args.out, num_classes=dataset_info(dataset)["num_classes"],
        device=device, source=source, radii=radii, progress=not args.no_progress,
    )  # fmt: skip
    if not is_main():
        return 0  # rank 0 reports the whole launch
    out = Path(args.out)
    rate = summary["noise_samples_per_s"]
    print(
        f"certified {summary['images']} images: "
        f"clean smoothed accuracy {summary['clean_smoothed_accuracy']:.3f}, "
        f"mean certified radius {summary['mean_certified_radius']:.4g}, "
        f"abstentions {summary['abstentions']}, "
        + ("no time recorded" if rate is None else f"{rate:.0f} noise samples/s")
    )
    launch = summary["launch"]
    if launch["world_size"] > 1:
        print(
            f"this launch: {launch['images']} images on {launch['world_size']} processes in "
            f"{launch['wall_seconds']:.1f} s, {launch['noise_samples_per_s']:.0f} noise samples/s in all"
        )
    for r, a in zip(summary["radii"], summary["certified_accuracy"], strict=True):
        print(f"  radius {r:.4g}: certified accuracy {a:.3f}")
    print(f"  (no radius above {summary['max_certifiable_radius']:.4g} can be certified with n={args.n})")
    print(f"wrote {out / 'certify.csv'}, {out / 'summary.json'}, {out / 'certified_accuracy.png'}")
    return 0
