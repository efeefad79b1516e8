"""pytest plumbing for the verification layer: the ``claims`` fixture and the claims table."""

from __future__ import annotations

import pytest

from verify.claims import LEDGER, MEASURES, ClaimLedger


@pytest.fixture(autouse=True)
def _bind_claims_to_test(request: pytest.FixtureRequest) -> None:
    LEDGER.current_test = request.node.nodeid


@pytest.fixture(scope="session")
def claims() -> ClaimLedger:
    """The run's claim ledger (session-scoped, so Hypothesis tests can use it)."""
    return LEDGER


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.failed:
        for rec in LEDGER.records.values():
            if report.nodeid in rec.tests:
                rec.failed_tests.add(report.nodeid)


def format_claims_table(ledger: ClaimLedger) -> list[str]:
    """One row per claim: paper, claim, cases checked, what is compared, worst error, tolerance, status."""
    rows = [("paper", "claim", "cases", "compared", "worst error", "tolerance", "status")]
    for name in sorted(ledger.records, key=lambda n: (ledger.records[n].paper, n)):
        rec = ledger.records[name]
        status = "FAIL" if rec.failed_tests else "PASS"
        compared = MEASURES[rec.measure_at_worst]  # what the worst error (the row's figure) measures
        rows.append((rec.paper, name, str(rec.cases), compared, f"{rec.worst_error:.3e}",
                     f"{rec.tolerance_at_worst:.3e}", status))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    fmt = "  ".join(f"{{:<{w}}}" if i in (0, 1, 3) else f"{{:>{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*rows[0]), "  ".join("-" * w for w in widths)]
    lines += [fmt.format(*r) for r in rows[1:]]
    return lines


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not LEDGER.records:
        return
    terminalreporter.section("claims verified (from this run's test results)")
    for line in format_claims_table(LEDGER):
        terminalreporter.write_line(line)
