"""pytest plumbing for the verification layer: the ``claims`` fixture and the claims table."""

from __future__ import annotations

import pytest

from verify.claims import LEDGER, ClaimLedger


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
    """One row per claim: cases checked, worst error, its tolerance, status."""
    rows = [("claim", "cases", "worst error", "tolerance", "status")]
    for name in sorted(ledger.records):
        rec = ledger.records[name]
        status = "FAIL" if rec.failed_tests else "PASS"
        rows.append((name, str(rec.cases), f"{rec.worst_error:.3e}", f"{rec.tolerance_at_worst:.3e}", status))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*rows[0]), "  ".join("-" * w for w in widths)]
    lines += [fmt.format(*r) for r in rows[1:]]
    return lines


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not LEDGER.records:
        return
    terminalreporter.section("claims verified (from this run's test results)")
    for line in format_claims_table(LEDGER):
        terminalreporter.write_line(line)
