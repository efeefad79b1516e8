"""``wbench verify``: re-check Lemma 1 and Corollaries 1-3 of Levine & Feizi in a few seconds."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="re-check Lemma 1 and Corollaries 1-3 on seeded cases (exit 1 on any failure)",
        description="Recompute Lemma 1 (min ||delta||_1 = W1 by four solvers, constructive flow plans) and "
        "Corollaries 1-3 on a few seeded cases and print a table of claims. The full verification "
        "is `pytest verify/`.",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random cases (default 0)")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON to PATH")
    parser.add_argument("--markdown", metavar="PATH", help="also write the table as Markdown to PATH")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from wbench.quickcheck import format_table, rows_for_json, run_quick_verification
    from wbench.runio import atomic_write_json, atomic_write_text, environment_record

    rows = run_quick_verification(seed=args.seed)
    print(format_table(rows))
    if args.json:
        record = {"seed": args.seed, "rows": rows_for_json(rows), "environment": environment_record()}
        atomic_write_json(args.json, record)
    if args.markdown:
        atomic_write_text(args.markdown, format_table(rows, markdown=True) + "\n")
    failed = [r["claim"] for r in rows if r["status"] != "PASS"]
    if failed:
        print(f"FAILED: {len(failed)} claim(s): " + "; ".join(failed))
        return 1
    print(f"all {len(rows)} claims passed (seed {args.seed})")
    return 0
