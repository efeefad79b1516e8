"""Certify a data set with a smoothed classifier: resumable CSV, JSON summary and plot.

Layout of an output folder::

    run.json                   what is being certified (settings, checkpoint hash, data set)
    certify.csv                one row per image, appended and fsynced as it finishes
    summary.json               certified accuracy on a radius grid, mean radius, throughput, versions
    certified_accuracy.png     certified accuracy vs radius
    shards/certify.rank<R>.csv rows of rank R under torchrun, until rank 0 merges them (wbench.sharding)

Rerunning with the same settings skips the images already in ``certify.csv`` or in a shard
(a torn last line from a crash is dropped and that image redone). Rerunning with different
settings raises ``ValueError`` instead of mixing two runs. Each image's noise is the stream of
the run seed and the image's data-set index (:mod:`wbench.noise_stream`), so results do not
depend on which images ran before, on how the data set is split, on the sub-batch size, on
resuming or on how many processes share the images.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from wbench import distributed as dist
from wbench.certification import ABSTAIN, certified_accuracy, certified_radius, resolve_ground
from wbench.options import Convention, Noise, parse_option
from wbench.runio import (
    CsvAppender,
    atomic_write_json,
    environment_record,
    finite_or_none,
    read_csv_records,
    unique_records,
)
from wbench.sharding import ImageShards, RunProgress

CSV_FIELDS = ("index", "label", "prediction", "p_lower", "radius", "correct", "seconds")
RUN_FILE, CSV_FILE, SUMMARY_FILE, PLOT_FILE = (
    "run.json",
    "certify.csv",
    "summary.json",
    "certified_accuracy.png",
)


@dataclass(frozen=True)
class CertifySettings:
    """Everything that determines a certificate (``batch_size`` and the device do not, on the CPU).

    ``ground=None`` takes the convention's ground metric (:func:`wbench.certification.resolve_ground`):
    L1 for ``"cohen"``, L2 for ``"authors"``, whose released code reports L2-ground radii.
    """

    sigma: float
    noise: str = "wasserstein"
    n0: int = 1000
    n: int = 10000
    alpha: float = 0.05
    ground: str | None = None
    convention: str = "cohen"
    seed: int = 0
    batch_size: int = 1000

    def __post_init__(self) -> None:
        object.__setattr__(self, "noise", parse_option(Noise, self.noise, "noise").value)
        object.__setattr__(self, "convention", parse_option(Convention, self.convention, "convention").value)
        object.__setattr__(self, "ground", resolve_ground(self.ground, self.convention).value)
        if not (isinstance(self.sigma, (int, float)) and math.isfinite(self.sigma) and self.sigma > 0):
            raise ValueError(f"sigma must be a positive finite number, got {self.sigma!r}")
        for name in ("n0", "n", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not 0 < self.alpha < 0.5:
            raise ValueError(f"alpha must be in (0, 0.5), got {self.alpha!r}")

    def identity(self) -> dict[str, Any]:
        """The settings that must match for a run to be resumed."""
        d = asdict(self)
        d.pop("batch_size")
        return d


def max_radius(settings: CertifySettings) -> float:
    """The largest radius ``n`` samples can certify: all correct, p_lower = alpha**(1/n)."""
    p = settings.alpha ** (1.0 / settings.n)
    return float(certified_radius(p, settings.sigma, settings.noise, settings.ground))


def default_radius_grid(settings: CertifySettings, points: int = 11) -> np.ndarray:
    """``points`` evenly spaced radii from 0 to just below :func:`max_radius`.

    The last point is the largest three-significant-digit number strictly below the cap: an
    image certified at the cap gets a radius that differs from it in the last bits (its
    Clopper-Pearson bound is not computed as ``alpha**(1/n)``), so a grid point at the cap
    itself would count it on one side or the other by rounding alone.
    """
    return np.linspace(0.0, round_below(max_radius(settings), 3), points)


def round_below(r: float, digits: int) -> float:
    """The largest number of ``digits`` significant digits strictly below ``r > 0``."""
    scale = 10.0 ** (math.floor(math.log10(r)) - digits + 1)
    return float(f"{(math.ceil(r / scale * (1 - 1e-9)) - 1) * scale:.{digits}g}")


def check_radius_grid(radii: Sequence[float]) -> np.ndarray:
    """``radii`` as a float64 array, or ``ValueError`` unless non-empty, finite and non-negative."""
    try:
        grid = np.asarray(radii, dtype=np.float64).ravel()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"radii must be numbers, got {radii!r}") from exc
    if grid.size == 0:
        raise ValueError("radii: the radius grid is empty; give at least one radius >= 0")
    bad = [float(r) for r in grid if not (math.isfinite(r) and r >= 0)]
    if bad:
        raise ValueError(f"radii must be finite and >= 0, got {', '.join(map(repr, bad))}")
    return grid


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file (identifies the checkpoint a run certified)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def parse_indices(spec: str | None, size: int, *, max_count: int | None = None, skip: int = 1) -> list[int]:
    """Indices from ``"3,5,9"``, ``"start:stop[:step]"`` or all; every ``skip``-th, at most ``max_count``.

    Raises ``ValueError`` on malformed specs, indices outside ``[0, size)``, a selection with
    no images, ``skip < 1`` or ``max_count < 1``.
    """
    if skip < 1:
        raise ValueError(f"--skip must be >= 1, got {skip}")
    if spec is None or spec == "":
        idx = list(range(size))
    elif ":" in spec:
        try:
            parts = [int(p) if p else None for p in spec.split(":")]
        except ValueError as exc:
            raise ValueError(f"malformed index range {spec!r}; use start:stop[:step]") from exc
        if len(parts) > 3:
            raise ValueError(f"malformed index range {spec!r}; use start:stop[:step]")
        idx = list(range(size))[slice(*parts)]
    else:
        try:
            idx = [int(p) for p in spec.split(",") if p.strip()]
        except ValueError as exc:
            raise ValueError(f"malformed index list {spec!r}; use comma-separated integers") from exc
    bad = [i for i in idx if not 0 <= i < size]
    if bad:
        raise ValueError(f"indices {bad[:5]} out of range for a split of {size} images")
    if not idx:
        raise ValueError(f"--indices {spec!r} selects no images (a range start:stop needs start < stop)")
    idx = idx[::skip]
    if max_count is not None:
        if max_count < 1:
            raise ValueError(f"--max-images must be >= 1, got {max_count}")
        idx = idx[:max_count]
    return idx


def _check_or_write_run(out_dir: Path, record: dict[str, Any], csv_name: str = CSV_FILE) -> None:
    """Record ``record`` in ``out_dir/run.json``, or check it against the one there (rows: ``csv_name``)."""
    path, csv_path = out_dir / RUN_FILE, out_dir / csv_name
    has_rows = csv_path.is_file() and csv_path.stat().st_size > 0
    afresh = f"move {csv_path} away or use another --out folder to start afresh"
    if not path.is_file():
        if has_rows:
            raise ValueError(
                f"{csv_path} exists but {path}, which records its settings, is missing, so its rows "
                f"cannot be checked against this run; {afresh}"
            )
        atomic_write_json(path, record)
        return
    try:
        old = json.loads(path.read_text())
        if not isinstance(old, dict):
            raise ValueError(f"a JSON {type(old).__name__}, not an object")
    except ValueError as exc:
        if not has_rows:  # nothing was certified under it: record this run's settings
            atomic_write_json(path, record)
            return
        reason = str(exc).splitlines()[0]
        raise ValueError(f"{path} is not a settings record ({reason}); {afresh}") from exc
    diff = {k: (old.get(k), v) for k, v in record.items() if old.get(k) != v}
    if diff:
        detail = "; ".join(f"{k}: existing {a!r} vs requested {b!r}" for k, (a, b) in diff.items())
        raise ValueError(
            f"{out_dir} holds a run with different settings ({detail}); use another --out folder"
        )


def _as_jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def certify_dataset(
    model: nn.Module,
    dataset: Sequence[tuple[torch.Tensor, int]],
    indices: Iterable[int],
    settings: CertifySettings,
    out_dir: str | os.PathLike,
    *,
    num_classes: int,
    device: str | torch.device | None = None,
    source: dict[str, Any] | None = None,
    radii: Sequence[float] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Certify ``dataset[i]`` for every ``i`` in ``indices``, resumably; return the summary.

    Parameters
    ----------
    model : torch.nn.Module
        The base classifier (original pixel units in, class scores out).
    dataset : sequence of (image, label)
        Indexable; images are ``(C, H, W)`` float tensors.
    settings : CertifySettings
        Noise, sigma, n0, n, alpha, ground metric, convention, seed, batch size.
    out_dir : path-like
        Output folder (see the module docstring).
    source : dict, optional
        Provenance that must match on resume (checkpoint hash, data set name and split).
    radii : sequence of float, optional
        Radius grid of the summary (default :func:`default_radius_grid`).

    Raises
    ------
    ValueError
        If another run holds ``out_dir`` (:func:`wbench.runio.locked_output`), or it holds
        rows of other settings.
    """
    indices = list(dict.fromkeys(int(i) for i in indices))  # a repeated index is certified once
    if not indices:
        raise ValueError("no images to certify: the index selection is empty")
    if radii is not None:
        radii = check_radius_grid(radii)
    dist.agree("certification settings", _launch_record(settings, source, out_dir, indices))
    with dist.output_lock(out_dir):
        return _certify_in_locked_folder(
            model, dataset, indices, settings, out_dir, num_classes=num_classes, device=device,
            source=source, radii=radii, progress=progress,
        )  # fmt: skip


def _certify_in_locked_folder(
    model: nn.Module,
    dataset: Sequence[tuple[torch.Tensor, int]],
    indices: Iterable[int],
    settings: CertifySettings,
    out_dir: str | os.PathLike,
    *,
    num_classes: int,
    device: str | torch.device | None,
    source: dict[str, Any] | None,
    radii: Sequence[float] | None,
    progress: bool,
) -> dict[str, Any]:
    from wbench.smoothing import LaplaceSmoothing, WassersteinSmoothing

    out_dir = Path(out_dir)
    record = _as_jsonable({"settings": settings.identity(), "source": source or {}})
    dist.on_main(_check_or_write_run, out_dir, record)

    cls = WassersteinSmoothing if settings.noise == Noise.WASSERSTEIN else LaplaceSmoothing
    smoothed = cls(
        model, num_classes, settings.sigma, seed=settings.seed, batch_size=settings.batch_size, device=device
    )
    read_certify_rows(out_dir)  # a garbled line or two results for one image stop the run here
    shards = ImageShards(out_dir / CSV_FILE, CSV_FIELDS)
    mine, left = shards.split(indices)
    per_image = settings.n0 + settings.n
    with CsvAppender(shards.path, CSV_FIELDS) as appender:
        desc = f"certify {settings.noise} sigma={settings.sigma:g} ({left} images)"
        run = RunProgress(left, per_image, desc=desc, enabled=progress)
        for i in mine:
            x, y = dataset[i]
            t0 = time.perf_counter()
            pred, p_lower, radius = smoothed.certify(
                torch.as_tensor(x), settings.n0, settings.n, settings.alpha, index=i,
                ground=settings.ground, convention=settings.convention, progress=run.advance,
            )  # fmt: skip
            dt = time.perf_counter() - t0
            appender.append(
                {
                    "index": i,
                    "label": int(y),
                    "prediction": pred,
                    "p_lower": repr(p_lower),
                    "radius": repr(radius),
                    "correct": int(pred == int(y)),
                    "seconds": f"{dt:.4f}",
                }
            )
            run.step()
        launch = run.close()
    shards.merge()
    extra = {"source": source or {}, "launch": launch}
    return dist.on_main(write_summary, out_dir, settings, radii=radii, indices=indices, extra=extra)


def _launch_record(
    settings: CertifySettings, source: dict[str, Any] | None, out_dir: str | os.PathLike, indices: list[int]
) -> dict[str, Any]:
    """What every rank of a launch must agree on: settings, provenance, folder and images."""
    digest = hashlib.sha256(json.dumps(indices).encode()).hexdigest()[:16]
    return {
        "settings": asdict(settings),
        "source": source or {},
        "out": str(out_dir),
        "indices": f"{len(indices)} images, sha256 {digest}",
    }


_FIELD_TYPES = {"index": int, "label": int, "prediction": int, "p_lower": float, "radius": float,
                "correct": int, "seconds": float}  # fmt: skip


def _field_ok(name: str, value: int | float, row: dict[str, str]) -> bool:
    """Whether one parsed field is a value CERTIFY can write (a hand edit may break it)."""
    if isinstance(value, float) and not math.isfinite(value):
        return False
    if name == "p_lower":
        return 0.0 <= value <= 1.0
    if name in ("radius", "seconds", "index", "label"):
        return value >= 0
    if name == "prediction":
        return value >= -1
    if name == "correct":
        return value == int(int(row["prediction"]) == int(row["label"]))
    return True


def _check_row(path: Path, line: int, row: dict[str, str]) -> None:
    for name, kind in _FIELD_TYPES.items():
        try:
            ok = _field_ok(name, kind(row[name]), row)
        except (KeyError, ValueError):
            ok = False
        if not ok:
            raise ValueError(
                f"{path} line {line} is garbled ({name} = {row.get(name)!r}): "
                "delete that line and rerun to redo that image"
            ) from None


def read_certify_rows(
    out_dir: str | os.PathLike, indices: Iterable[int] | None = None
) -> list[dict[str, str]]:
    """The rows of ``out_dir/certify.csv``, one per image, restricted to ``indices`` when given.

    A row repeated for one image (equal but for ``seconds``) is counted once, with a
    :class:`~wbench.runio.RunWarning` that says so.

    Raises
    ------
    ValueError
        For a garbled line, or two rows of one image that disagree (both name the file and line).
    """
    path = Path(out_dir) / CSV_FILE
    records = read_csv_records(path)
    for line, row in records:
        _check_row(path, line, row)
    rows = unique_records(path, records, lambda row: int(row["index"]), lambda index: f"image index {index}")
    if indices is None:
        return rows
    wanted = {int(i) for i in indices}
    return [r for r in rows if int(r["index"]) in wanted]


def row_arrays(rows: Sequence[dict[str, str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(prediction, correct, radius)`` of certify rows as int64, bool and float64 arrays."""
    pred = np.array([int(r["prediction"]) for r in rows], dtype=np.int64)
    correct = np.array([int(r["correct"]) for r in rows], dtype=bool)
    radius = np.array([float(r["radius"]) for r in rows], dtype=np.float64)
    return pred, correct, radius


def fine_radius_grid(*radii: np.ndarray | Sequence[float]) -> np.ndarray:
    """300 radii from 0 to 1.05 x the largest finite value in ``radii``, for certified-accuracy plots.

    A step plot of a coarse summary grid would hold each value up to the next grid point and
    overstate the accuracy in between; curves on this grid follow the per-image radii.
    """
    finite = [float(np.max(r[np.isfinite(r)])) for r in map(np.asarray, radii) if np.isfinite(r).any()]
    r_top = max(finite, default=0.0)
    return np.linspace(0.0, 1.05 * r_top if r_top > 0 else 1.0, 300)


def summarize_rows(rows: Sequence[dict[str, str]], settings: CertifySettings, radii: Sequence[float]) -> dict:
    """Certified accuracy on ``radii``, mean certified radius, clean accuracy, abstentions, throughput.

    Values that do not exist (accuracies of zero images, throughput of zero seconds) are ``None``.
    """
    pred, correct, radius = row_arrays(rows)
    seconds = float(sum(float(r["seconds"]) for r in rows))
    acc = certified_accuracy(radius, correct, pred, radii)
    certified = correct & (pred != ABSTAIN)
    n_img = len(rows)
    # None (JSON null) where there is no value: no images, or no measurable time
    return {
        "images": n_img,
        "radii": [float(r) for r in radii],
        "certified_accuracy": [finite_or_none(a) for a in acc],
        "clean_smoothed_accuracy": float(certified.mean()) if n_img else None,
        "mean_certified_radius": float(np.where(certified, radius, 0.0).mean()) if n_img else None,
        "abstentions": int((pred == ABSTAIN).sum()),
        "seconds": seconds,
        "noise_samples_per_s": (settings.n0 + settings.n) * n_img / seconds if seconds > 0 else None,
    }


def write_summary(
    out_dir: str | os.PathLike,
    settings: CertifySettings,
    *,
    radii: Sequence[float] | None = None,
    indices: Iterable[int] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Summarise ``certify.csv`` into ``summary.json`` (atomic) and ``certified_accuracy.png``.

    The summary records ``max_certifiable_radius`` (:func:`max_radius`), and the plot marks it.

    ``indices`` restricts the summary to those images (default: every row of the CSV), so a
    rerun that asks for fewer images than the folder holds reports only the ones it asked for.
    """
    from wbench.plots import plot_certified_accuracy

    out_dir = Path(out_dir)
    rows = read_certify_rows(out_dir, indices)
    radii = default_radius_grid(settings) if radii is None else check_radius_grid(radii)
    summary = summarize_rows(rows, settings, radii)
    cap = max_radius(settings)
    summary.update(
        {
            "max_certifiable_radius": cap,
            "settings": asdict(settings),
            "seed": settings.seed,
            "environment": environment_record(),
            "radius_units": f"W1 ({settings.ground} ground metric), normalised mass",
            **(extra or {}),
        }
    )
    atomic_write_json(out_dir / SUMMARY_FILE, summary)
    label = f"{settings.noise} sigma={settings.sigma:g}"
    pred, correct, radius = row_arrays(rows)
    grid = fine_radius_grid(radius, radii)
    plot_certified_accuracy(
        {label: (grid, certified_accuracy(radius, correct, pred, grid))},
        out_dir / PLOT_FILE,
        title=f"{summary['images']} images, n0={settings.n0}, n={settings.n}, alpha={settings.alpha}",
        xlabel=f"certified W1 radius ({settings.ground} ground metric, normalised mass)",
        caps={label: cap},
    )
    return summary
