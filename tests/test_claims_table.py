"""The claims table of ``pytest verify/`` says which paper each claim is from and what it compares."""

from __future__ import annotations

import pytest

from verify.claims import ClaimLedger
from verify.conftest import format_claims_table


def test_rows_name_the_paper_and_compare_relative_errors_where_the_tolerance_is_relative():
    ledger = ClaimLedger()
    ledger.current_test = "verify/test_gradnorm.py::test_x"
    ledger.close("Eq. 7: a norm", [2.0, 1000.0], [2.0, 1000.5], rtol=1e-3)  # relative error 5e-4
    ledger.current_test = "verify/test_corollaries.py::test_y"
    ledger.close("Cor. 1: a difference", 1e-13, 0.0, rtol=0, atol=1e-12)
    ledger.leq("Cor. 1: an inequality", 1.0, 2.0, atol=1e-12)
    rel = ledger.records["Eq. 7: a norm"]
    assert rel.paper == "Lin et al. 2019" and rel.measure_at_worst == "rel"
    assert rel.worst_error == pytest.approx(0.5 / 1000.5, rel=1e-12) and rel.tolerance_at_worst == 1e-3
    table = "\n".join(format_claims_table(ledger))
    assert "(004)" not in table and "(000)" not in table
    lines = {line.split("  ")[0].strip(): line for line in table.splitlines()[2:]}
    assert set(lines) == {"Lin et al. 2019", "Levine & Feizi 2020"}
    assert "relative error |a-e|/|e|" in lines["Lin et al. 2019"]
    assert "absolute error |a-e|" in table and "inequality violation" in table
