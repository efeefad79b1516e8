"""The ``wbench`` command line: one subcommand module each under ``wbench.cli``.

Each subcommand module defines ``register(subparsers)``, which adds its parser and
sets ``func``; heavy imports happen inside ``func`` so ``wbench --help`` is quick.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from collections.abc import Sequence

from wbench import __version__

# subcommand modules, in the order --help lists them
SUBCOMMANDS = ("report", "verify", "train", "certify", "attack", "reproduce")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wbench",
        description="Verify and benchmark Wasserstein robustness: Wasserstein smoothing "
        "(Levine & Feizi 2020) and Wasserstein gradient penalties (Lin et al. 2019).",
    )
    parser.add_argument("--version", action="version", version=f"wbench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"wbench.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"wbench.cli.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    import torch.distributed

    from wbench import distributed

    def one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
        _stderr_line(f"wbench {args.command}: warning: {_one_line(message)}")

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = one_line_warning
        try:
            if distributed.launched() and not getattr(args, "distributed", False):
                raise ValueError("this command runs in one process; start it without torchrun")
            with distributed.process_group():
                try:
                    return int(args.func(args) or 0)
                except distributed.SharedError as exc:  # raised on every rank: all print, then exit
                    _stderr_line(f"wbench {args.command}: error: {_one_line(exc)}")
                    distributed.meet_after_shared_error()
                    return 2
        except (ValueError, OSError) as exc:  # OSError: a disk that fills up, a file vanishing mid-run
            _stderr_line(f"wbench {args.command}: error: {_one_line(exc)}")
            return 2
        except distributed.RanksLostError as exc:
            _stderr_line(f"wbench {args.command}: error: {_one_line(exc)}")
            return 1
        except torch.distributed.DistError as exc:  # raised inside torch (DDP, rendezvous): same cause
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            rank = os.environ.get("RANK", "?")
            message = f"wbench {args.command}: error: rank {rank} lost the other ranks: {reason}"
            _stderr_line(message)
            return 1


def _stderr_line(text: str) -> None:
    """Write ``text`` and its newline to stderr in one write: under torchrun the ranks share the stream."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _one_line(message: object) -> str:
    """``message`` as one line: an error or warning is never split over several."""
    return " ".join(str(message).split())


if __name__ == "__main__":
    sys.exit(main())
