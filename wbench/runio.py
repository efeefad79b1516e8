"""Run bookkeeping: an exclusive lock on an output folder, atomic writes, checkpoints loaded
with ``weights_only=True``, append-and-flush CSV rows, and the environment record every run
carries."""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import os
import platform
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

LOCK_FILE = ".wbench.lock"
"""Name of the lock file :func:`locked_output` keeps inside an output folder."""

_held: dict[Path, int] = {}  # folders this process has locked -> nesting depth
_held_guard = threading.Lock()

_VERSIONED = ("wbench", "torch", "torchvision", "numpy", "scipy", "POT", "cvxpy", "scikit-learn")


def environment_record() -> dict[str, Any]:
    """Library versions, Python, platform and accelerator: recorded by every run."""
    versions = {}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    from wbench.noise_stream import STREAM_VERSION

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": versions,
        "cuda_available": torch.cuda.is_available(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        # the definition of the noise (every implementation draws the same stream)
        "noise_stream": STREAM_VERSION,
    }


def _describe_holder(lock_path: Path) -> str:
    try:
        record = json.loads(lock_path.read_text())
        command = " ".join(" ".join(record["command"]).split())  # one line
        if len(command) > 200:
            command = command[:197] + "..."
        return f"pid {record['pid']} on {record['host']}: {command}"
    except (OSError, ValueError, KeyError, TypeError):  # the holder has not written its record yet
        return "a process that has not yet recorded itself"


@contextlib.contextmanager
def locked_output(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on the output folder ``out_dir`` (created if absent) for a run.

    The lock is ``fcntl.flock(LOCK_EX | LOCK_NB)`` on ``out_dir/.wbench.lock``, which records the
    holder's pid, host and command line. The kernel releases it when the holder exits, however
    it exits (``kill -9`` included), so a lock is never stale. Nested use in one process on the
    same folder is allowed (a report holds its folder while the reproduction inside it runs).

    Yields
    ------
    pathlib.Path
        ``out_dir``.

    Raises
    ------
    ValueError
        If another process holds the folder (the message names the folder and the holder), or
        the folder cannot be created or written.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output folder {out} is an existing file; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise ValueError(f"cannot create output folder {out}: a part of its path is a file") from exc
    except OSError as exc:
        raise ValueError(f"cannot create output folder {out}: {exc.strerror}") from exc
    key = out.resolve()
    with _held_guard:
        if key in _held:
            _held[key] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield out
        finally:
            with _held_guard:
                _held[key] -= 1
        return
    lock_path = out / LOCK_FILE
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        raise ValueError(f"cannot write to output folder {out}: {exc.strerror}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(
                f"output folder {out} is in use by another run ({_describe_holder(lock_path)}); "
                "wait for it to finish or choose another --out"
            ) from None
        record = {"pid": os.getpid(), "host": socket.gethostname(), "command": list(sys.orig_argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        with _held_guard:
            _held[key] = 1
        try:
            yield out
        finally:
            with _held_guard:
                del _held[key]
    finally:
        os.close(fd)  # closing the last descriptor releases the flock


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``.

    A reader never sees a half-written file, and a crash leaves the old file intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Atomic text write (UTF-8); see :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomic, pretty-printed JSON write."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to memory, then an atomic write: checkpoints are never half-written."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary code from pickles)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    return torch.load(path, map_location=map_location, weights_only=True)


class CsvAppender:
    """Append rows to a CSV, flushing and fsyncing each, so an interrupted run loses nothing.

    The header is written once; reopening an existing file checks it matches.
    """

    def __init__(self, path: str | os.PathLike, fieldnames: Sequence[str]):
        self.path = Path(path)
        self.fieldnames = list(fieldnames)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        exists = self.path.is_file() and self.path.stat().st_size > 0
        if exists:
            with open(self.path, newline="") as fh:
                header = next(csv.reader(fh), None)
            if header != self.fieldnames:
                raise ValueError(f"{self.path} has columns {header}, expected {self.fieldnames}")
            _truncate_partial_last_line(self.path)
        self._fh = open(self.path, "a", newline="")
        self._writer = csv.DictWriter(self._fh, fieldnames=self.fieldnames)
        if not exists:
            self._writer.writeheader()
            self._flush()

    def _flush(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def append(self, row: Mapping[str, Any]) -> None:
        """Write one row and flush it to disk."""
        self._writer.writerow(row)
        self._flush()

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> CsvAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _truncate_partial_last_line(path: Path) -> None:
    """Drop a trailing line that a crash left without its newline."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with open(path, "r+b") as fh:
            fh.truncate(cut)


def read_csv_rows(path: str | os.PathLike) -> list[dict[str, str]]:
    """All complete rows of a CSV written by :class:`CsvAppender` (empty if absent)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        text = fh.read()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    return list(csv.DictReader(io.StringIO(text)))
