"""Scale-out with torch.distributed, launched by torchrun (gloo on the CPU, NCCL for CUDA tensors).

``torchrun --nproc-per-node N -m wbench certify ...`` starts N copies of a command, each with
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` and a rendezvous in its environment.
:func:`process_group` joins them into one process group (``gloo`` on a machine without CUDA,
``cpu:gloo,cuda:nccl`` with it, so small control messages stay on the CPU and DDP's gradients
use NCCL) with a timeout, so a rank that stops answering ends the run instead of hanging it.

Without ``WORLD_SIZE`` in the environment nothing here does anything: no process group is
created, :func:`rank` is 0, :func:`world_size` is 1 and every collective helper returns at once.

The helpers keep every rank's outcome the same: :func:`agree` compares a value across ranks and
:func:`raise_if_any` spreads one rank's error to all, so a bad launch (ranks started with
different settings, an output folder locked by another run, a folder the ranks do not share)
ends every rank with the same one-line ``ValueError`` instead of leaving some waiting.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from wbench.devices import resolve_device

T = TypeVar("T")

TIMEOUT_ENV = "WBENCH_DIST_TIMEOUT"
"""Environment variable: seconds any collective may wait for the slowest rank (default 1800)."""

DEFAULT_TIMEOUT_S = 1800.0
RANKS_FILE = ".wbench.ranks"
"""Written by rank 0 into a locked output folder; every other rank must read it back."""


class RanksLostError(RuntimeError):
    """A collective failed: another rank stopped (crashed, killed) or the timeout passed."""


class SharedError(ValueError):
    """A ``ValueError`` raised on every rank at the same collective (:func:`raise_if_any`, :func:`agree`).

    Every rank reaches the same point with it, so the ranks can meet once more
    (:func:`meet_after_shared_error`) before any exits.
    """


@contextlib.contextmanager
def _collective() -> Iterator[None]:
    try:
        yield
    except RuntimeError as exc:  # gloo reports a dead peer as a plain RuntimeError
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RanksLostError(f"rank {rank()} lost the other ranks: {reason}") from exc


def launched() -> bool:
    """True when the process was started by torchrun (``WORLD_SIZE`` is set)."""
    return "WORLD_SIZE" in os.environ


def active() -> bool:
    """True inside :func:`process_group` (a torch.distributed default group exists)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if active() else 0


def world_size() -> int:
    """Number of ranks (1 without a process group)."""
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """True on rank 0, the rank that merges, writes summaries and checkpoints and shows progress."""
    return rank() == 0


def local_rank() -> int:
    """The rank on this machine (``LOCAL_RANK``; 0 without torchrun)."""
    return _env_int("LOCAL_RANK", 0)


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name}={text!r} is not an integer") from None


def timeout() -> timedelta:
    """The collective timeout: ``$WBENCH_DIST_TIMEOUT`` seconds, default 1800."""
    text = os.environ.get(TIMEOUT_ENV)
    if text is None:
        return timedelta(seconds=DEFAULT_TIMEOUT_S)
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"{TIMEOUT_ENV}={text!r} must be a positive number of seconds")
    return timedelta(seconds=seconds)


@contextlib.contextmanager
def process_group() -> Iterator[None]:
    """Join the torchrun launch for the duration of the block; nothing when ``WORLD_SIZE`` is unset.

    Raises
    ------
    ValueError
        If the launch environment is malformed (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` or
        :data:`TIMEOUT_ENV` not numbers).
    """
    if not launched():
        yield
        return
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        _env_int(name, 0)
    wait = timeout()
    if torch.cuda.is_available():
        if local_rank() < torch.cuda.device_count():
            torch.cuda.set_device(local_rank())
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    try:
        dist.init_process_group(backend, timeout=wait)
    except RuntimeError as exc:  # the rendezvous failed or timed out
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RanksLostError(f"rank {os.environ['RANK']} could not join the other ranks: {reason}") from exc
    try:
        yield
    finally:
        dist.destroy_process_group()


def local_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The device of this rank: ``auto``/``cuda`` become ``cuda:LOCAL_RANK`` under torchrun.

    Without a process group this is :func:`wbench.devices.resolve_device`.

    Raises
    ------
    ValueError
        Under torchrun, if a CUDA index is given (every process would share it) or this machine
        has fewer GPUs than processes.
    """
    device = resolve_device(spec)
    if not active() or device.type != "cuda":
        return device
    if device.index is not None:
        raise ValueError(
            f"--device {spec} under torchrun would put every process on one GPU; pass --device cuda "
            "(or auto): each process takes cuda:LOCAL_RANK"
        )
    count = torch.cuda.device_count()
    if local_rank() >= count:
        raise ValueError(
            f"local rank {local_rank()} has no GPU of its own: this machine has {count}; "
            f"start at most {count} processes per machine (--nproc-per-node) or pass --device cpu"
        )
    return torch.device("cuda", local_rank())


def all_gather(value: Any) -> list[Any]:
    """``value`` from every rank, in rank order (``[value]`` without a process group)."""
    if not active():
        return [value]
    out: list[Any] = [None] * world_size()
    with _collective():
        dist.all_gather_object(out, value)
    return out


def broadcast(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (``value`` itself without a process group)."""
    if not active():
        return value
    box = [value]
    with _collective():
        dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait for every rank (within the process group's timeout)."""
    if active():
        with _collective():
            dist.barrier()


def meet_after_shared_error() -> None:
    """Wait until every rank has reported a :class:`SharedError`; call it after printing one.

    torchrun stops the remaining ranks as soon as one exits with an error, so without this
    meeting a rank may be killed before its message is written. A rank already gone only ends
    the wait early.
    """
    try:
        barrier()
    except RanksLostError:
        pass  # the others have exited: nothing is left to wait for


def all_sum(values: list[float]) -> list[float]:
    """Element-wise sum over ranks of a short list of numbers (float64, on the CPU)."""
    if not active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    with _collective():
        dist.all_reduce(t)
    return t.tolist()


def raise_if_any(error: str | None) -> None:
    """Collective: raise ``ValueError`` on every rank if any rank passes an error message.

    The message is the lowest failing rank's, prefixed with that rank (when there are several).
    """
    errors = all_gather(error)
    for r, message in enumerate(errors):
        if message is not None:
            raise SharedError(message if len(errors) == 1 else f"rank {r}: {message}")


def on_main(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Collective: ``fn(*args, **kwargs)`` on rank 0 only; its result, or its ``ValueError``, on every rank.

    Without a process group this is a plain call.
    """
    if not active():
        return fn(*args, **kwargs)
    result, error = None, None
    if is_main():
        try:
            result = fn(*args, **kwargs)
        except ValueError as exc:
            error = str(exc)
    raise_if_any(error)
    return broadcast(result)


def agree(what: str, value: dict[str, Any]) -> None:
    """Collective: raise ``ValueError`` on every rank unless all ranks hold an equal ``value``.

    Ranks of one launch must run the same command; on several machines each machine's torchrun
    gets its own command line, and a difference would mix two runs in one output.

    Raises
    ------
    ValueError
        Naming the first rank that differs from rank 0 and the keys that differ.
    """
    values = all_gather(_canonical(value))
    for r, other in enumerate(values[1:], start=1):
        if other != values[0]:
            keys = sorted(k for k in set(values[0]) | set(other) if values[0].get(k) != other.get(k))
            detail = "; ".join(f"{k}: rank 0 {values[0].get(k)!r} vs rank {r} {other.get(k)!r}" for k in keys)
            raise SharedError(
                f"the ranks were launched with different {what} ({detail}); relaunch them alike"
            )


def _canonical(value: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


@contextlib.contextmanager
def output_lock(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold ``out_dir`` exclusively for a run: :func:`wbench.runio.locked_output` on rank 0 only.

    Under torchrun rank 0 takes the lock and the outcome reaches every rank, so a folder held
    by another run (a second launch with the same ``--out``) stops every rank with rank 0's
    message. Rank 0 then writes a token into the folder that every other rank must read back:
    ranks on several machines must share the folder (the same path on a shared file system),
    since rank 0 merges their shards.

    Raises
    ------
    ValueError
        On every rank, if the folder is held by another run or not shared by all ranks.
    """
    from wbench.runio import atomic_write_json, locked_output

    if not active():
        with locked_output(out_dir) as out:
            yield out
        return
    out = Path(out_dir)
    token_path = out / RANKS_FILE
    with contextlib.ExitStack() as stack:
        error, token = None, None
        if is_main():
            try:
                stack.enter_context(locked_output(out))
                token = {"launch": uuid.uuid4().hex, "world_size": world_size()}
                atomic_write_json(token_path, token)
                stack.callback(token_path.unlink, missing_ok=True)
            except ValueError as exc:
                error = str(exc)
        raise_if_any(error)
        token = broadcast(token)
        seen = None
        if not is_main():
            try:
                seen = json.loads(token_path.read_text())
            except (OSError, ValueError):
                seen = None
        raise_if_any(
            None
            if is_main() or seen == token
            else f"does not see the output folder {out} that rank 0 writes; on several machines --out "
            "must be the same folder on a file system they share"
        )
        yield out
        barrier()  # rank 0 keeps the lock until every rank has finished writing
