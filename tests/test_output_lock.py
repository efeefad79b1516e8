"""The exclusive output-folder lock (``wbench.runio.locked_output``) and the commands that hold it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from wbench.cli import main
from wbench.runio import LOCK_FILE, locked_output

REPO = Path(__file__).resolve().parents[1]

HOLDER = """
import sys
from wbench.runio import locked_output
with locked_output(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def holder(tmp_path):
    """A separate process that holds the lock on ``tmp_path / 'out'`` until it is killed."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
    )
    assert proc.stdout.readline() == b"held\n"
    yield out, proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_a_second_holder_is_refused_with_the_folder_and_the_holding_process(holder):
    out, proc = holder
    with pytest.raises(ValueError) as info:
        with locked_output(out):
            pass
    message = str(info.value)
    assert str(out) in message and f"pid {proc.pid}" in message and "locked_output" in message
    record = json.loads((out / LOCK_FILE).read_text())
    assert record["pid"] == proc.pid and record["host"] == socket.gethostname()


def test_kill_9_releases_the_lock(holder):
    out, proc = holder
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    with locked_output(out) as path:  # the kernel dropped the dead holder's lock: nothing stale
        assert path == out
        assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_the_lock_is_reentrant_within_a_process_and_released_on_exit(tmp_path):
    with locked_output(tmp_path / "a") as outer:
        with locked_output(tmp_path / "a" / ".." / "a") as inner:  # the same folder, spelled differently
            assert inner.resolve() == outer.resolve()
        with locked_output(tmp_path / "a" / "sub"):  # another folder has its own lock
            pass
    code = f"from wbench.runio import locked_output\nwith locked_output({str(tmp_path / 'a')!r}): pass"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


@pytest.mark.parametrize(
    "command",
    [
        ["certify", "{ckpt}", "--out", "{out}", "--max", "1", "--n0", "8", "--n", "16", "--no-progress"],
        ["train", "--preset", "digits_quick", "--epochs", "1", "--out", "{out}", "--no-progress"],
        ["reproduce", "--out", "{out}", "--sigmas", "0.02", "--max", "1", "--no-progress"],
        ["report", "--out", "{out}", "--quick", "--no-progress"],
    ],
    ids=["certify", "train", "reproduce", "report"],
)
def test_every_writing_command_exits_2_while_another_run_holds_its_folder(
    holder, checkpoint, capsys, command
):
    out, proc = holder
    argv = [a.format(ckpt=checkpoint, out=out) for a in command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(out) in err and f"pid {proc.pid}" in err
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE], "nothing written while locked"
