"""Per-image work shared among the ranks of a torchrun launch: shard CSVs, the split, progress, the merge.

Layout inside an output folder, next to the CSV a single process appends to (``certify.csv`` of
``wbench certify``, keyed by index; ``attack.csv`` of ``wbench attack``, keyed by (index, eps))::

    certify.csv                     rows of finished images (single process, or merged by rank 0)
    shards/certify.rank<R>.csv      rows appended by rank R of a launch (same columns)

Every rank appends to its own shard with :class:`wbench.runio.CsvAppender` (one fsynced row per
image; a torn last line from a kill is dropped when that shard is reopened, and ignored when
read). Rank 0 decides what is left to do from the merged CSV and every shard, from any earlier
launch and world size, and deals the remaining keys out in turn (one key, or one chunk of
consecutive keys, per turn), so ranks hold disjoint shares and their counts differ by at most one
turn. Once all ranks have finished, rank 0 merges the shards into the CSV, sorted by key, with an
atomic write, and deletes them; a crash in between leaves rows in both places, and each key is
then taken once.

Without a process group :attr:`ImageShards.path` is the CSV itself and nothing is merged
unless an earlier sharded launch left shards behind.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from pathlib import Path
from typing import Any

from wbench import distributed as dist
from wbench.runio import atomic_write_text, read_csv_rows

SHARD_DIR = "shards"


def index_key(row: dict[str, str]) -> int:
    """The key of a ``certify.csv`` row: its data-set index."""
    return int(row["index"])


class ImageShards:
    """The rows of a per-image CSV, written by one process or by the ranks of a launch.

    Parameters
    ----------
    csv_path : path-like
        The merged CSV (``OUT/certify.csv``, ``OUT/attack.csv``).
    fields : sequence of str
        Its columns.
    key : callable, optional
        A row's key (hashable and sortable; one row per key): the items :meth:`split` deals out and
        the order of the merged CSV. Default :func:`index_key`, the data-set index.
    """

    def __init__(
        self,
        csv_path: str | Path,
        fields: Sequence[str],
        key: Callable[[dict[str, str]], Hashable] = index_key,
    ):
        self.csv_path = Path(csv_path)
        self.fields = list(fields)
        self.key = key
        self.shard_dir = self.csv_path.parent / SHARD_DIR

    @property
    def path(self) -> Path:
        """Where this rank appends: its shard under torchrun, else the merged CSV."""
        if not dist.active():
            return self.csv_path
        return self.shard_dir / f"{self.csv_path.stem}.rank{dist.rank()}{self.csv_path.suffix}"

    def shard_files(self) -> list[Path]:
        """Shards left by this or earlier launches (of any world size)."""
        return sorted(self.shard_dir.glob(f"{self.csv_path.stem}.rank*{self.csv_path.suffix}"))

    def rows(self) -> list[dict[str, str]]:
        """Complete rows of the merged CSV and of every shard, each key once (the first seen)."""
        out: dict[Hashable, dict[str, str]] = {}
        for path in (self.csv_path, *self.shard_files()):
            for row in read_csv_rows(path):
                out.setdefault(self.key(row), row)
        return list(out.values())

    def split(self, keys: Iterable[Hashable], chunk: int = 1) -> tuple[list, int]:
        """This rank's share of ``keys`` not yet done anywhere, and the number left in total.

        Collective: rank 0 reads the files, drops the keys already in a row, cuts the rest into
        runs of ``chunk`` consecutive keys and deals them out in turn. Only the last run of all is
        shorter, and it ends the share of the rank that gets it, so cutting a share into runs of
        ``chunk`` again gives back exactly the runs one process would cut (``wbench attack``
        attacks each run as one batch).
        """
        todo = None
        if dist.is_main():
            done = {self.key(r) for r in self.rows()}
            todo = [k for k in keys if k not in done]
        todo = dist.broadcast(todo)
        runs = [todo[s : s + chunk] for s in range(0, len(todo), chunk)]
        return [k for run in runs[dist.rank() :: dist.world_size()] for k in run], len(todo)

    def merge(self) -> None:
        """Collective: once every rank is done, rank 0 merges all shards into the CSV, sorted by key."""
        dist.barrier()
        if dist.is_main() and self.shard_files():
            rows = sorted(self.rows(), key=self.key)
            buf = io.StringIO(newline="")
            writer = csv.DictWriter(buf, fieldnames=self.fields, lineterminator="\r\n")
            writer.writeheader()
            writer.writerows(rows)
            atomic_write_text(self.csv_path, buf.getvalue())
            for path in self.shard_files():
                path.unlink()
            self.shard_dir.rmdir()
        dist.barrier()


class RunProgress:
    """Progress of the whole launch, shown by rank 0: noise samples done and samples/s over all ranks.

    Ranks advance in rounds of one image each (:meth:`step` is collective), so rank 0 always
    knows the total; the round also bounds how long a rank can wait for a silent peer by the
    process group's timeout. Within a round the bar follows rank 0's own sub-batches
    (:meth:`advance`), so one large image still shows progress. A rank whose share is shorter
    joins the remaining rounds in :meth:`close`.

    Parameters
    ----------
    total : int
        Images left in the whole launch (all ranks).
    samples_per_image : int
        Noise samples each image costs (``n0 + n``).
    """

    def __init__(self, total: int, samples_per_image: int, *, desc: str, enabled: bool = True):
        from tqdm.auto import tqdm

        self.rounds_left = -(-total // dist.world_size())
        self.samples_per_image = samples_per_image
        self.images = 0
        self._shown = 0  # samples of rank 0's current image already on the bar
        self.bar = tqdm(
            total=total * samples_per_image, desc=desc, unit="sample", unit_scale=True,
            disable=not (enabled and dist.is_main()),
        )  # fmt: skip
        dist.barrier()
        self.t0 = time.perf_counter()

    def advance(self, samples: int) -> None:
        """This rank drew ``samples`` more noise samples of its current image (local, no communication)."""
        self._shown += samples
        self.bar.update(samples)

    def step(self, images: int = 1) -> None:
        """Collective: this rank finished ``images`` (1, or 0 after its share ran out) this round."""
        done = int(dist.all_sum([float(images)])[0])
        self.rounds_left -= 1
        self.images += done
        self.bar.update(done * self.samples_per_image - self._shown)
        self._shown = 0
        self.bar.set_postfix(samples_per_s=f"{self.rate():.0f}", ranks=dist.world_size())

    def rate(self) -> float:
        """Noise samples per second over all ranks since the start (wall clock of rank 0)."""
        elapsed = time.perf_counter() - self.t0
        return self.images * self.samples_per_image / elapsed if elapsed > 0 else 0.0

    def close(self) -> dict[str, Any]:
        """Finish the remaining rounds; return this launch's world size, images, seconds and rate."""
        while self.rounds_left > 0:
            self.step(0)
        self.bar.close()
        return {
            "world_size": dist.world_size(),
            "images": self.images,
            "wall_seconds": time.perf_counter() - self.t0,
            "noise_samples_per_s": self.rate(),
        }
