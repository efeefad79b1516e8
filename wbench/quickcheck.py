"""A quick re-check of Lemma 1 and Corollaries 1-3 of Levine & Feizi on a few seeded cases.

:func:`run_quick_verification` computes every claim from the solvers' actual results in a
few seconds (the full verification is ``pytest verify/``); :func:`format_table` prints it.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

RTOL_W1 = 1e-9
"""Agreement of exact float64 W1 values from different solvers."""
RTOL_EXACT = 1e-12
"""Float64 rounding allowance for identities and exact values."""
COLUMNS = ("claim", "cases", "worst_error", "tolerance", "status")


@dataclass
class _Claim:
    cases: int = 0
    worst_error: float = 0.0
    tolerance: float = 0.0
    worst_ratio: float = -1.0
    failed: bool = False

    def add(self, error: float, tolerance: float) -> None:
        self.cases += 1
        self.failed |= not (math.isfinite(error) and error <= tolerance)
        ratio = _ratio(error, tolerance)
        if ratio > self.worst_ratio:
            self.worst_ratio, self.worst_error, self.tolerance = ratio, error, tolerance


def _ratio(error, tolerance):
    """error / tolerance, with 0/0 = 0 and anything non-finite or over a zero tolerance = inf."""
    if not np.isfinite(error) or (tolerance <= 0 and error > 0):
        return math.inf
    return error / tolerance if tolerance > 0 else 0.0


class _Ledger:
    def __init__(self) -> None:
        self.claims: dict[str, _Claim] = {}

    def close(self, claim: str, actual, expected, *, rtol: float, atol: float = 0.0) -> None:
        a, e = np.broadcast_arrays(np.asarray(actual, np.float64), np.asarray(expected, np.float64))
        dev, allow = np.abs(a - e).ravel(), (atol + rtol * np.abs(e)).ravel()
        i = int(np.argmax([_ratio(d, t) for d, t in zip(dev, allow, strict=True)]))
        self.claims.setdefault(claim, _Claim()).add(float(dev[i]), float(allow[i]))

    def leq(self, claim: str, lhs: float, rhs: float, *, atol: float) -> None:
        self.claims.setdefault(claim, _Claim()).add(max(float(lhs) - float(rhs), 0.0), atol)

    def rows(self) -> list[dict]:
        return [
            {
                "claim": name,
                "cases": rec.cases,
                "worst_error": rec.worst_error,
                "tolerance": rec.tolerance,
                "status": "FAIL" if rec.failed else "PASS",
            }
            for name, rec in self.claims.items()
        ]


def _check_lemma1(ledger: _Ledger, x: np.ndarray, y: np.ndarray) -> None:
    from wbench.flow import apply_flow
    from wbench.transport import min_flow_norm, optimal_flow_plan, w1

    w_pot = w1(x, y, ground="l1", solver="pot")
    ledger.close("Lemma 1: Ling-Okada LP (Eq. 23) = W1 (POT)", w1(x, y, solver="lp"), w_pot, rtol=RTOL_W1)
    ledger.close("Lemma 1: network min-cost flow = W1 (POT)", w1(x, y, solver="network"), w_pot, rtol=RTOL_W1)
    ledger.close(
        "Lemma 1: min||delta||_1 (Eq. 22 LP) = W1 (POT)", min_flow_norm(x, y)[1], w_pot, rtol=RTOL_W1
    )
    plan, value = optimal_flow_plan(x, y)
    residual = apply_flow(torch.from_numpy(x), plan).numpy() - y
    ledger.close(
        "Lemma 1: optimal_flow_plan reproduces x'", residual, 0.0, rtol=0, atol=RTOL_EXACT * max(x.sum(), 1.0)
    )
    ledger.close(
        "Lemma 1: ||optimal_flow_plan||_1 = W1 (POT)", [float(plan.l1_norm()), value], w_pot, rtol=RTOL_W1
    )


def _check_corollaries_1_3(ledger: _Ledger, x: np.ndarray, y: np.ndarray) -> None:
    from wbench.transport import w1

    w_l1, w_l2 = w1(x, y, ground="l1"), w1(x, y, ground="l2")
    slack = RTOL_EXACT * (w_l1 + x.sum())
    dist = float(np.abs(x - y).sum())
    ledger.leq("Cor. 1: ||x - x'||_1 <= 2 W1 (L1 ground)", dist, 2 * w_l1, atol=slack)
    ledger.leq("Cor. 1: ||x - x'||_1 <= 2 W1 (L2 ground)", dist, 2 * w_l2, atol=slack)
    ledger.leq("Cor. 3: W1(L1 ground) <= sqrt(2) W1(L2 ground)", w_l1, math.sqrt(2) * w_l2, atol=slack)


@contextlib.contextmanager
def _c_stdout_silenced() -> Iterator[None]:
    """Send what C libraries print on file descriptor 1 (the HiGHS banner) to ``/dev/null``."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def run_quick_verification(seed: int = 0) -> list[dict]:
    """Re-check Lemma 1 and Corollaries 1-3 on a few seeded cases (a few seconds on one core).

    Cases: five random dense pairs (8x8 and 10x7), a sparse 16x16 pair (80% zeros), a real
    8x8 digit pair, a one-hot pair, the tightness examples of Corollaries 1 and 3, and a
    colour 3x8x8 pair whose channels carry different masses.

    The LP solver's banner, which HiGHS prints on the C-level stdout the first time it runs
    in a process, is silenced so that ``wbench verify`` and ``wbench report`` print only
    their own output.

    Parameters
    ----------
    seed : int
        Seed of the random cases.

    Returns
    -------
    list of dict
        One row per claim with keys ``claim``, ``cases``, ``worst_error`` (the deviation, or
        for an inequality the violation, with the largest ratio to its tolerance),
        ``tolerance`` (the tolerance of that case) and ``status`` (``"PASS"`` or ``"FAIL"``).
    """
    with _c_stdout_silenced():
        return _run(seed)


def _run(seed: int) -> list[dict]:
    """The checks of :func:`run_quick_verification`, without the banner silencing."""
    from wbench.transport import min_flow_norm, optimal_flow_plan, w1
    from wbench.transport.examples import digits_pair, one_hot_pair, random_pair

    rng = np.random.default_rng(seed)
    ledger = _Ledger()
    pairs = [random_pair(rng, (8, 8) if k % 2 == 0 else (10, 7)) for k in range(5)]
    pairs.append(random_pair(rng, (16, 16), density=0.2))
    pairs.append(digits_pair(*(int(i) for i in rng.choice(1797, size=2, replace=False))))
    for x, y in pairs:
        _check_lemma1(ledger, x, y)
        _check_corollaries_1_3(ledger, x, y)

    src, dst = (1, 2), (6, 7)
    x, y = one_hot_pair((8, 8), src, dst, mass=0.5)
    for solver in ("pot", "lp", "network"):
        ledger.close(
            "Lemma 1: one-hot W1 (L1) = mass x Manhattan distance",
            w1(x, y, solver=solver),
            0.5 * 10,
            rtol=RTOL_EXACT,
        )

    x, y = one_hot_pair((8, 8), (3, 3), (3, 3))
    y[3, 3], y[4, 3] = 0.5, 0.5
    for ground in ("l1", "l2"):
        ledger.close(
            "Cor. 1: equality on the half-mass shift",
            np.abs(x - y).sum(),
            2 * w1(x, y, ground),
            rtol=RTOL_EXACT,
        )
    x, y = one_hot_pair((8, 8), (3, 3), (4, 4))
    ledger.close(
        "Cor. 3: equality on a one-pixel diagonal move",
        math.sqrt(2) * w1(x, y, ground="l2"),
        w1(x, y, ground="l1"),
        rtol=RTOL_EXACT,
    )

    x, y = random_pair(rng, (3, 8, 8))
    per_channel = sum(w1(x[k], y[k]) for k in range(3))
    ledger.close("Cor. 2: colour W1 = sum of channel W1s", w1(x, y), per_channel, rtol=RTOL_EXACT)
    plan, value = optimal_flow_plan(x, y)
    norms = [float(plan.l1_norm()), value, min_flow_norm(x, y)[1], w1(x, y, solver="network")]
    ledger.close("Cor. 2: colour W1 (L1) = min flow-plan norm (Eq. 69)", norms, per_channel, rtol=RTOL_W1)
    return ledger.rows()


def rows_for_json(rows: list[dict]) -> list[dict]:
    """``rows`` with a non-finite error or tolerance as ``None``, for strict JSON (a FAIL stays a FAIL)."""
    from wbench.runio import finite_or_none

    return [
        {**r, "worst_error": finite_or_none(r["worst_error"]), "tolerance": finite_or_none(r["tolerance"])}
        for r in rows
    ]


def _number(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3e}"


def format_table(rows: list[dict], markdown: bool = False) -> str:
    """Format :func:`run_quick_verification` rows as an aligned text table or a Markdown table."""
    cells = [
        (
            str(r["claim"]),
            str(r["cases"]),
            _number(r["worst_error"]),
            _number(r["tolerance"]),
            str(r["status"]),
        )
        for r in rows
    ]
    header = ("claim", "cases", "worst error", "tolerance", "status")
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "| --- | ---: | ---: | ---: | --- |"]
        lines += ["| " + " | ".join(c) + " |" for c in cells]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [header, *cells]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*header), "  ".join("-" * w for w in widths)]
    lines += [fmt.format(*c) for c in cells]
    return "\n".join(lines)
