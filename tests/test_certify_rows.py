"""Hand-edited certify.csv rows: values CERTIFY never writes are refused on resume."""

from __future__ import annotations

import pytest

from wbench.dataset_certification import CSV_FILE, read_certify_rows

HEADER = "index,label,prediction,p_lower,radius,correct,seconds\n"
GOOD = "1,6,6,0.75,0.02,1,0.11\n"


def _write(tmp_path, *rows: str):
    (tmp_path / CSV_FILE).write_text(HEADER + "".join(rows))
    return tmp_path


def test_good_rows_are_read(tmp_path):
    rows = read_certify_rows(_write(tmp_path, "0,7,-1,0.42,0.0,0,19.0\n", GOOD))
    assert [r["index"] for r in rows] == ["0", "1"]


@pytest.mark.parametrize(
    "row, field",
    [
        ("1,6,6,nan,0.02,1,0.11\n", "p_lower"),
        ("1,6,6,1.5,0.02,1,0.11\n", "p_lower"),
        ("1,6,6,0.75,-5,1,0.11\n", "radius"),
        ("1,6,6,0.75,inf,1,0.11\n", "radius"),
        ("1,6,6,0.75,nan,1,0.11\n", "radius"),
        ("1,6,-7,0.75,0.02,0,0.11\n", "prediction"),
        ("1,6,4,0.75,0.02,1,0.11\n", "correct"),
        ("1,6,6,0.75,0.02,0,0.11\n", "correct"),
        ("1,6,6,0.75,0.02,2,0.11\n", "correct"),
        ("-1,6,6,0.75,0.02,1,0.11\n", "index"),
        ("1,6,6,0.75,0.02,1,nan\n", "seconds"),
    ],
)
def test_impossible_values_are_garbled(tmp_path, row, field):
    with pytest.raises(ValueError, match=rf"line 2 is garbled \({field} = "):
        read_certify_rows(_write(tmp_path, row))


def test_pickle_stream_that_underflows_the_unpickler_stack_is_a_value_error(tmp_path):
    from wbench.runio import load_checkpoint

    path = tmp_path / "damaged.pt"
    path.write_bytes(b"]e.")  # EMPTY_LIST, APPENDS without a MARK: torch raises IndexError
    with pytest.raises(ValueError, match="not a readable torch.save file"):
        load_checkpoint(path)
