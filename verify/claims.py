"""Claims ledger for ``pytest verify/``.

Each numerical check names the paper claim it tests and records its error and
tolerance; the table printed at the end of the run (see ``conftest.py``) is built
from these records and from the pytest outcome of every test that made them, never
from a hand-written list.

Every row says which paper the claim is from (by the test module that checked it) and
what was compared: a relative error ``|a - e| / |e|`` against ``rtol`` where a check has no
absolute allowance, otherwise the absolute deviation against ``atol + rtol |e|``, an
inequality's violation, a statistic against its bound, or a yes/no property.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

#: test module -> the paper whose claims it checks (any other module: Levine & Feizi 2020)
PAPER_OF_MODULE = {"test_gradnorm.py": "Lin et al. 2019", "test_lin_theorem1.py": "Lin et al. 2019"}
DEFAULT_PAPER = "Levine & Feizi 2020"

#: what ``worst_error`` measures, per kind of check
MEASURES = {
    "rel": "relative error |a-e|/|e|",
    "abs": "absolute error |a-e|",
    "violation": "inequality violation",
    "statistic": "test statistic vs bound",
    "property": "property (0 holds, 1 fails)",
}


def paper_of(nodeid: str) -> str:
    """The paper of the test ``nodeid`` (``verify/test_x.py::test_y``)."""
    return PAPER_OF_MODULE.get(nodeid.split("::")[0].rsplit("/", 1)[-1], DEFAULT_PAPER)


@dataclass
class ClaimRecord:
    """What one claim accumulated over a run."""

    paper: str = DEFAULT_PAPER
    measure_at_worst: str = "abs"
    cases: int = 0
    worst_error: float = 0.0
    tolerance_at_worst: float = 0.0
    worst_ratio: float = -1.0
    tests: set[str] = field(default_factory=set)
    failed_tests: set[str] = field(default_factory=set)


class ClaimLedger:
    """Records checks per claim; used through the ``claims`` fixture."""

    def __init__(self) -> None:
        self.records: dict[str, ClaimRecord] = {}
        self.current_test: str = "<outside a test>"

    def _record(self, claim: str, error: float, tolerance: float, measure: str) -> ClaimRecord:
        rec = self.records.setdefault(claim, ClaimRecord(paper=paper_of(self.current_test)))
        rec.cases += 1
        rec.tests.add(self.current_test)
        ratio = (
            math.inf
            if not math.isfinite(error)
            else error / tolerance
            if tolerance > 0
            else (0.0 if error == 0 else math.inf)
        )
        if ratio > rec.worst_ratio:
            rec.worst_ratio, rec.worst_error, rec.tolerance_at_worst = ratio, error, tolerance
            rec.measure_at_worst = measure
        return rec

    def close(self, claim: str, actual, expected, *, rtol: float, atol: float = 0.0, case: str = "") -> float:
        """Assert ``|actual - expected| <= atol + rtol * |expected|`` elementwise.

        With ``atol == 0`` (and every ``expected`` non-zero) the recorded error is the relative
        error ``|actual - expected| / |expected|`` of the worst element and the tolerance is
        ``rtol``; otherwise the absolute deviation of the worst element and its allowance.
        """
        a = np.asarray(actual, dtype=np.float64)
        e = np.asarray(expected, dtype=np.float64)
        a, e = np.broadcast_arrays(a, e)
        dev = np.abs(a - e)
        allow = atol + rtol * np.abs(e)
        if dev.size == 0:
            raise AssertionError(f"{claim} [{case}]: nothing to compare")
        if not np.isfinite(dev).all():
            idx = int(np.argmax(~np.isfinite(dev).ravel()))
        else:
            idx = (
                int(np.argmax((dev / np.where(allow > 0, allow, np.inf)).ravel()))
                if (allow > 0).all()
                else int(np.argmax(dev.ravel()))
            )
        err, tol = float(dev.ravel()[idx]), float(allow.ravel()[idx])
        relative = atol == 0 and rtol > 0 and bool((e != 0).all())
        if relative:
            self._record(claim, err / abs(float(e.ravel()[idx])), rtol, "rel")
        else:
            self._record(claim, err, tol, "abs")
        assert err <= tol, (
            f"{claim} [{case}]: |actual - expected| = {err:.3e} > tolerance {tol:.3e} "
            f"(actual {a.ravel()[idx]!r}, expected {e.ravel()[idx]!r})"
        )
        return err

    def leq(self, claim: str, lhs, rhs, *, atol: float, case: str = "") -> float:
        """Assert ``lhs <= rhs + atol`` elementwise; error = worst violation ``max(lhs - rhs, 0)``."""
        lhs = np.asarray(lhs, dtype=np.float64)
        rhs = np.asarray(rhs, dtype=np.float64)
        viol = np.max(np.maximum(lhs - rhs, 0.0)) if lhs.size else 0.0
        if not (np.isfinite(lhs).all() and np.isfinite(rhs).all()):
            viol = math.inf
        self._record(claim, float(viol), atol, "violation")
        assert viol <= atol, f"{claim} [{case}]: lhs exceeds rhs by {viol:.3e} > {atol:.3e}"
        return float(viol)

    def below(self, claim: str, value: float, bound: float, *, case: str = "") -> float:
        """Assert a non-negative statistic is at most ``bound`` (e.g. a KS distance vs its critical value).

        The recorded error is the statistic itself and the tolerance is the bound.
        """
        value = float(value)
        self._record(claim, value if math.isfinite(value) else math.inf, float(bound), "statistic")
        assert value <= bound, f"{claim} [{case}]: statistic {value:.4g} > bound {bound:.4g}"
        return value

    def true(self, claim: str, condition: bool, *, case: str = "", detail: str = "") -> None:
        """Assert a yes/no property (error 1 when false, tolerance 0)."""
        self._record(claim, 0.0 if condition else 1.0, 0.0, "property")
        assert condition, f"{claim} [{case}]: {detail or 'property does not hold'}"


LEDGER = ClaimLedger()
