"""``wbench report``: train, certify and verify on the embedded digits data set; write a report folder."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report",
        help="end-to-end run on digits: train smoothed models, certify, verify; write a report folder",
        description="Train Wasserstein- and Laplace-smoothed classifiers on scikit-learn's 8x8 digits, "
        "certify a test subset, re-check Lemma 1 and Corollaries 1-3, and write report.md, plots and "
        "summary.json to --out. A few minutes on two CPU cores; rerun to reuse finished parts.",
    )
    p.add_argument("--out", default="wbench-report", help="report folder (default ./wbench-report)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--quick", action="store_true", help="a smoke run in well under a minute (tiny sample counts)"
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from wbench.report import run_report

    path = run_report(
        args.out, device=args.device, seed=args.seed, quick=args.quick, progress=not args.no_progress
    )
    print(path.read_text())
    print(f"report written to {path.parent.resolve()} (open {path.name})")
    return 0
