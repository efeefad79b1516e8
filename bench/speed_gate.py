"""CI speed gate: relative speed claims of wbench, checked as ratios measured in one process.

Run ``python bench/speed_gate.py [--device cpu|cuda|auto] [--rounds N] [--json PATH]``. For each
check both sides are timed alternately (A B A B ...) after a warm-up, so they share the machine's
load; the gated figure is the median over rounds of the per-pair ratio time(A) / time(B). Absolute
seconds are printed but never gated. The process exits 1 when any ratio misses its threshold (or a
check cannot run), 0 otherwise.

Checks (thresholds from the project's issue):

* Lin et al. Algorithm 1 (``impl="conv"``) >= 20x faster than the dense L(x) at 28x28, radius 2,
  batch 32;
* Wasserstein-smoothed sampling throughput >= 0.8x the plain forward throughput of the MNIST net at
  batch 1000 (i.e. time(forward) / time(smoothed) >= 0.8);
* flow-noise training step <= 1.25x the clean step (MNIST net, batch 128);
* Wasserstein-penalty step <= 1.3x the Euclidean-penalty step (MNIST net, batch 128);
* the ``"network"`` W1 solver >= 3x faster than POT on 28x28 dense histograms.
"""

from __future__ import annotations

import argparse
import operator
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _common as common  # noqa: E402

Thunk = Callable[[], object]
_OPS = {">=": operator.ge, "<=": operator.le}


@dataclass(frozen=True)
class RatioCheck:
    """One gated ratio ``time(A) / time(B)`` compared with ``threshold`` by ``op``.

    ``build(device)`` prepares both sides (outside the timing) and returns the two callables;
    each must synchronise its device before returning.
    """

    name: str
    side_a: str
    side_b: str
    op: str
    threshold: float
    build: Callable[[object], tuple[Thunk, Thunk]]
    rounds: int = 15
    warmup: int = 2


@dataclass(frozen=True)
class Outcome:
    """Measured figures of one check."""

    name: str
    side_a: str
    side_b: str
    median_a_s: float
    median_b_s: float
    ratio: float
    op: str
    threshold: float
    rounds: int
    passed: bool
    error: str = ""


def passes(ratio: float, op: str, threshold: float) -> bool:
    """Whether ``ratio op threshold`` holds (``op`` is ``">="`` or ``"<="``); NaN never passes."""
    if op not in _OPS:
        raise ValueError(f"unknown comparison {op!r}; expected '>=' or '<='")
    return ratio == ratio and bool(_OPS[op](ratio, threshold))


def summarise(check: RatioCheck, times_a: Sequence[float], times_b: Sequence[float]) -> Outcome:
    """Medians of both sides and the median per-pair ratio, judged against the check's threshold."""
    ratio = common.median_pair_ratio(times_a, times_b)
    return Outcome(
        name=check.name,
        side_a=check.side_a,
        side_b=check.side_b,
        median_a_s=statistics.median(times_a),
        median_b_s=statistics.median(times_b),
        ratio=ratio,
        op=check.op,
        threshold=check.threshold,
        rounds=len(times_a),
        passed=passes(ratio, check.op, check.threshold),
    )


def run_check(
    check: RatioCheck,
    device: object,
    rounds: int | None = None,
    *,
    clock: Callable[[], float] = time.perf_counter,
) -> Outcome:
    """Build and time one check; an exception becomes a failed outcome carrying the error."""
    n = rounds if rounds is not None else check.rounds
    try:
        fn_a, fn_b = check.build(device)
        times_a, times_b = common.interleaved_times(fn_a, fn_b, n, warmup=check.warmup, clock=clock)
    except Exception as exc:  # report the broken check as FAIL with its cause, keep gating the others
        traceback.print_exc()
        nan = float("nan")
        return Outcome(
            check.name, check.side_a, check.side_b, nan, nan, nan, check.op, check.threshold, 0, False,
            error=f"{type(exc).__name__}: {exc}",
        )  # fmt: skip
    return summarise(check, times_a, times_b)


def format_table(outcomes: Sequence[Outcome]) -> str:
    """A plain-text table of every figure: both medians, the ratio, the threshold and PASS/FAIL."""
    header = ("check", "A", "median A [ms]", "B", "median B [ms]", "A/B", "need", "rounds", "result")
    rows = [header]
    for o in outcomes:
        rows.append(
            (
                o.name,
                o.side_a,
                f"{o.median_a_s * 1e3:.2f}",
                o.side_b,
                f"{o.median_b_s * 1e3:.2f}",
                f"{o.ratio:.3f}",
                f"{o.op} {o.threshold:g}",
                str(o.rounds),
                "PASS" if o.passed else ("ERROR" if o.error else "FAIL"),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for o in outcomes:
        if o.error:
            lines.append(f"{o.name}: {o.error}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The checks. Each builder imports what it needs, so one broken module fails only its own check.


def _build_gradnorm(device) -> tuple[Thunk, Thunk]:
    from wbench.gradnorm import wasserstein_grad_norm_sq

    x = common.mnist5k_images(32, seed=1, device=device)
    grad = common.mnist_like(32, 1, 28, 28, density=1.0, seed=2, device=device) - 0.5

    def run(impl: str) -> Thunk:
        def thunk() -> None:
            wasserstein_grad_norm_sq(x, grad, radius=2, impl=impl)
            common.sync(device)

        return thunk

    return run("dense"), run("conv")


def _build_smoothing(device) -> tuple[Thunk, Thunk]:
    import torch

    from wbench.models import build_model
    from wbench.smoothing import WassersteinSmoothing

    batch = 1000
    torch.manual_seed(0)
    model = build_model("mnist_wong").to(device).eval()
    x = common.mnist5k_images(1, device=device)[0]
    batch_x = x.unsqueeze(0).repeat(batch, 1, 1, 1)
    smoother = WassersteinSmoothing(model, 10, 0.01, seed=0, batch_size=batch, device=device)

    def forward() -> None:
        with torch.inference_mode():
            model(batch_x).argmax(1)
        common.sync(device)

    def smoothed() -> None:
        smoother.sample_counts(x, batch, index=0, batch_size=batch)
        common.sync(device)

    return forward, smoothed


def _build_train(mode_a: str, mode_b: str) -> Callable[[object], tuple[Thunk, Thunk]]:
    def build(device) -> tuple[Thunk, Thunk]:
        import torch

        from wbench.models import build_model

        x = common.mnist5k_images(128, device=device)
        y = common.labels(128, device=device)
        steps = []
        for mode in (mode_a, mode_b):
            torch.manual_seed(0)
            net = build_model("mnist_wong").to(device)
            step = common.make_train_step(net, mode, device=device)
            steps.append(lambda step=step: step(x, y))
        return steps[0], steps[1]

    return build


def _build_transport(device) -> tuple[Thunk, Thunk]:
    from wbench.transport import w1

    x, y = common.histogram_pair(28, "dense", seed=28)
    return (lambda: w1(x, y, ground="l1", solver="pot")), (lambda: w1(x, y, ground="l1", solver="network"))


# Rounds are sized for ~20 s on a quiet 2-core machine and ~1-2 min on a loaded one.
CHECKS: tuple[RatioCheck, ...] = (
    RatioCheck(
        "grad-norm conv vs dense (28x28, r=2, B=32)",
        "dense",
        "conv",
        ">=",
        20.0,
        _build_gradnorm,
        rounds=11,
    ),
    RatioCheck(
        "smoothed vs plain throughput (MNIST net, B=1000)",
        "forward",
        "W-smoothed",
        ">=",
        0.8,
        _build_smoothing,
        rounds=31,
    ),
    RatioCheck(
        "flow-noise vs clean step (MNIST net, B=128)",
        "flow-noise",
        "clean",
        "<=",
        1.25,
        _build_train("flow_noise", "clean"),
        rounds=101,
        warmup=5,
    ),
    RatioCheck(
        "W- vs Euclidean-penalty step (MNIST net, B=128)",
        "W-penalty",
        "E-penalty",
        "<=",
        1.3,
        _build_train("wasserstein_penalty", "euclidean_penalty"),
        rounds=101,
        warmup=5,
    ),
    RatioCheck(
        "W1 network vs POT (28x28 dense)", "pot", "network", ">=", 3.0, _build_transport, rounds=21, warmup=2
    ),
)


def _json_safe(record: dict) -> dict:
    """NaN (a check that could not run) becomes null: strict JSON has no NaN."""
    return {k: (None if isinstance(v, float) and v != v else v) for k, v in record.items()}


def main(
    argv: Sequence[str] | None = None,
    checks: Sequence[RatioCheck] = CHECKS,
    *,
    clock: Callable[[], float] = time.perf_counter,
) -> int:
    """Run every check, print the table, optionally write JSON; return 1 if any check fails.

    ``checks`` and ``clock`` are injectable so the gate's logic can be tested on synthetic timings.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument(
        "--rounds", type=int, default=None, help="interleaved rounds per check (default: per check, 11-101)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's own default, left untouched). On a machine "
        "shared with other jobs, 1 measures the work itself rather than thread-scheduling stalls",
    )
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")

    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)

    from wbench.devices import resolve_device

    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        parser.error(str(exc))

    started = time.perf_counter()
    outcomes = []
    for check in checks:
        print(f"[speed gate] {check.name} ...", flush=True)
        outcomes.append(run_check(check, device, args.rounds, clock=clock))
    elapsed = time.perf_counter() - started

    print()
    threads = torch.get_num_threads()
    print(
        f"speed gate on {device}, {threads} torch threads "
        "(ratio = median over rounds of time(A) / time(B), interleaved A B A B)"
    )
    print(format_table(outcomes))
    failed = [o.name for o in outcomes if not o.passed]
    print(f"\n{len(outcomes) - len(failed)}/{len(outcomes)} passed in {elapsed:.1f} s")
    if args.json is not None:
        from wbench.runio import atomic_write_json, environment_record

        payload = {
            "device": str(device),
            "torch_threads": threads,
            "seconds": elapsed,
            "passed": not failed,
            "checks": [_json_safe(asdict(o)) for o in outcomes],
            "environment": environment_record(),
        }
        atomic_write_json(args.json, payload)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
