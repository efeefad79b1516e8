"""Run bookkeeping: an exclusive lock on an output folder, atomic writes, checkpoints loaded
with ``weights_only=True``, append-and-flush CSV rows, and the environment record every run
carries."""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import math
import os
import pickle
import platform
import re
import secrets
import socket
import sys
import threading
import warnings
import zipfile
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

LOCK_FILE = ".wbench.lock"
"""Name of the lock file :func:`locked_output` keeps inside an output folder."""

_TEMP_NAME = re.compile(r"\.(?P<target>.+)\.[0-9a-z_]{8}\.tmp")
"""Names of the temporary files of :func:`atomic_write_bytes`: ``.NAME.XXXXXXXX.tmp``."""

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


class RunWarning(UserWarning):
    """Something in an output folder was repaired or ignored; the message says what."""


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
        remove_stale_temporaries(out)
        with _held_guard:
            _held[key] = 1
        try:
            yield out
        finally:
            with _held_guard:
                del _held[key]
    finally:
        os.close(fd)  # closing the last descriptor releases the flock


def remove_stale_temporaries(folder: str | os.PathLike) -> list[str]:
    """Delete the temporary files that interrupted :func:`atomic_write_bytes` calls left in ``folder``.

    Only call this while holding the folder's lock (:func:`locked_output` does), so that no
    write in progress can lose its temporary file. Returns the names removed.
    """
    removed = []
    for entry in os.scandir(folder):
        if _TEMP_NAME.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
            Path(entry.path).unlink(missing_ok=True)
            removed.append(entry.name)
    return sorted(removed)


def _create_temporary(folder: Path, name: str) -> tuple[int, Path]:
    """A new ``.NAME.XXXXXXXX.tmp`` in ``folder`` with mode ``0o666 & ~umask``, like any new file."""
    while True:
        tmp = folder / f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666), tmp
        except FileExistsError:
            continue


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``.

    A reader never sees a half-written file, and a crash leaves the old file intact (and a
    ``.NAME.XXXXXXXX.tmp`` file, which the next run in that folder removes). The file's
    permissions follow the umask, as for any newly created file.

    Raises
    ------
    ValueError
        If ``path`` is a folder, a part of its folder is a file, or the folder is not writable.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"cannot write {path}: it is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise ValueError(f"cannot write {path}: a part of its folder is a file") from exc
    try:
        fd, tmp = _create_temporary(path.parent, path.name)
    except OSError as exc:
        raise ValueError(f"cannot write {path}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Atomic text write (UTF-8); see :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _first_non_finite(obj: Any, where: str = "") -> str | None:
    """The key path (e.g. ``['runs'][1]['x']``) of the first NaN or infinity in ``obj``, if any."""
    if isinstance(obj, float | np.floating):
        return None if math.isfinite(obj) else where or "the value"
    if isinstance(obj, Mapping):
        items = obj.items()
    elif isinstance(obj, list | tuple):
        items = enumerate(obj)
    else:
        return None
    for key, value in items:
        found = _first_non_finite(value, f"{where}[{key!r}]")
        if found:
            return found
    return None


def finite_or_none(value: float | None) -> float | None:
    """``float(value)``, or ``None`` where there is no finite value (strict JSON has no NaN)."""
    return None if value is None or not math.isfinite(value) else float(value)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomic, pretty-printed, strict JSON write (no ``NaN`` or ``Infinity`` tokens).

    Raises
    ------
    ValueError
        If ``obj`` holds a non-finite float (the message names its key); write ``None``
        (JSON ``null``) where there is no value.
    """
    where = _first_non_finite(obj)
    if where is not None:
        raise ValueError(f"refusing to write {path}: {where} is not finite (strict JSON)")
    text = json.dumps(obj, indent=2, sort_keys=True, default=_json_default, allow_nan=False)
    atomic_write_text(path, text + "\n")


def _json_default(obj: Any) -> Any:
    """NumPy scalars as their Python values; anything else (paths, devices) as its text."""
    return obj.item() if isinstance(obj, np.generic) else str(obj)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to memory, then an atomic write: checkpoints are never half-written."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


_REFUSED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict with ``weights_only=True`` (no arbitrary code from pickles).

    Raises
    ------
    ValueError
        One line naming the file and what is wrong with it: absent, a folder, empty, not a
        ``torch.save`` archive (truncated, random bytes, text, a zip without data), an object
        that safe loading refuses, or something other than a dict.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"checkpoint {path} is a folder, not a file; give the checkpoint.pt inside it")
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise ValueError(f"checkpoint {path} is empty (an interrupted copy?)")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _REFUSED_GLOBAL.search(str(exc))
        if found is None:  # not a pickle of allowed types at all: random bytes, a foreign format
            raise ValueError(
                f"checkpoint {path} is not a readable torch.save file (no valid pickle data)"
            ) from None
        raise ValueError(
            f"checkpoint {path} holds a {found.group(1)} object, which safe loading (weights_only=True) "
            "refuses; wbench reads checkpoints of tensors and plain containers, as `wbench train` writes"
        ) from None
    except (RuntimeError, EOFError, OSError, KeyError, IndexError, ValueError, zipfile.BadZipFile):
        raise ValueError(
            f"checkpoint {path} is not a readable torch.save file (truncated, damaged or another format)"
        ) from None
    if not isinstance(obj, dict):
        raise ValueError(f"checkpoint {path} holds a {type(obj).__name__}, not a checkpoint dict")
    return obj


class CsvAppender:
    """Append rows to a CSV, flushing and fsyncing each, so an interrupted run loses nothing.

    The header is written once; reopening an existing file checks it matches. A last line that
    a crash left without its newline is dropped first, so a torn header is rewritten whole.
    """

    def __init__(self, path: str | os.PathLike, fieldnames: Sequence[str]):
        self.path = Path(path)
        self.fieldnames = list(fieldnames)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if self.path.is_file():
                _truncate_partial_last_line(self.path)
            exists = self.path.is_file() and self.path.stat().st_size > 0
            if exists:
                with open(self.path, newline="") as fh:
                    header = next(csv.reader(fh), None)
                if header != self.fieldnames:
                    raise ValueError(f"{self.path} has columns {header}, expected {self.fieldnames}")
            self._fh = open(self.path, "a", newline="")
        except OSError as exc:
            raise ValueError(f"cannot append to {self.path}: {exc.strerror}") from exc
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


def read_csv_records(path: str | os.PathLike) -> list[tuple[int, dict[str, str]]]:
    """``(line number, row)`` of every complete row of a CSV written by :class:`CsvAppender`.

    The header is line 1. An absent file, or one holding only a torn header, has no rows.

    Raises
    ------
    ValueError
        For a row whose number of fields differs from the header's (naming the file and line).
    """
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        text = fh.read()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    records = []
    for row in reader:
        if len(row) != len(header):
            raise ValueError(
                f"{path} line {reader.line_num} is garbled ({len(row)} fields, the header has "
                f"{len(header)}): delete that line and rerun to redo it"
            )
        records.append((reader.line_num, dict(zip(header, row, strict=True))))
    return records


def unique_records(
    path: str | os.PathLike,
    records: Sequence[tuple[int, dict[str, str]]],
    key: Callable[[dict[str, str]], Hashable],
    describe: Callable[[Any], str],
) -> list[dict[str, str]]:
    """One row per ``key`` of the ``records`` of ``path`` (:func:`read_csv_records`), in file order.

    A run that was killed after its row reached the disk but before it knew so writes that row
    again on resume: a row equal to an earlier one of its key but for ``seconds`` counts once,
    with a :class:`RunWarning` naming it. ``describe(key)`` names a key in messages.

    Raises
    ------
    ValueError
        If two rows of one key disagree on anything but ``seconds`` (naming both lines): the
        folder mixes two runs.
    """
    first: dict[Hashable, tuple[int, dict[str, str]]] = {}
    duplicates = []
    for line, row in records:
        k = key(row)
        if k not in first:
            first[k] = (line, row)
            continue
        line0, row0 = first[k]
        if _without_seconds(row) != _without_seconds(row0):
            raise ValueError(
                f"{path} lines {line0} and {line} give different results for {describe(k)}, so the folder "
                "mixes two runs; delete the wrong line or start afresh in another --out folder"
            )
        duplicates.append(f"{describe(k)} at line {line}")
    if duplicates:
        more = f" and {len(duplicates) - 5} more" if len(duplicates) > 5 else ""
        message = f"{path}: ignored {len(duplicates)} duplicate row(s): {', '.join(duplicates[:5])}{more}"
        warnings.warn(message, RunWarning, stacklevel=3)
    return [row for _, row in first.values()]


def _without_seconds(row: dict[str, str]) -> dict[str, str]:
    """A row without its timing: what two runs of one item must agree on."""
    return {k: v for k, v in row.items() if k != "seconds"}


def read_csv_rows(path: str | os.PathLike) -> list[dict[str, str]]:
    """All complete rows of a CSV written by :class:`CsvAppender` (see :func:`read_csv_records`)."""
    return [row for _, row in read_csv_records(path)]
