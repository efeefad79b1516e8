"""Attack a data set at several W1 budgets: resumable CSV, JSON summary, robustness plot, image grid.

Layout of an output folder::

    run.json                   what is being attacked (settings, checkpoint hash, data set)
    attack.csv                 one row per image and budget, appended and fsynced as it finishes
    examples.pt                clean and adversarial tensors of the first images (for the grid)
    summary.json               empirical robust accuracy per budget, W1 statistics, throughput, versions
    robust_accuracy.png        empirical robust accuracy vs W1 radius (with the certified curve of
                               ``--certify-dir`` on the same axes: the structure of Levine & Feizi's Figure 7;
                               a logarithmic radius axis when the budgets span a factor of 10 or more)
    examples.png               clean and adversarial images with their exact W1

Rerunning with the same settings skips the (image, budget) pairs already in ``attack.csv``; other
settings raise ``ValueError``; the folder is locked against a concurrent run
(:func:`wbench.distributed.output_lock`). Budgets may be added on a rerun.

Under torchrun the ranks share the work through :class:`wbench.sharding.ImageShards`, keyed by
(index, eps), as ``wbench certify`` does: for each budget rank 0 cuts the pairs left into the
batches one process would attack and deals them out in turn; rank R appends to
``shards/attack.rank<R>.csv`` and keeps its grid images in ``shards/examples.rank<R>.pt``; when
all are done rank 0 merges them into ``attack.csv`` (sorted by index, then eps) and
``examples.pt`` and writes the summary and plots. Each batch is the one a single process attacks,
and a smoothed attack's noise is keyed by (seed, index), so the rows equal a single process's.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from wbench import distributed as dist
from wbench.attacks.core import W1_RTOL, planned_steps
from wbench.dataset_certification import _as_jsonable, _check_or_write_run, _launch_record
from wbench.options import AttackMethod, Ground, Noise, parse_option
from wbench.runio import (
    CsvAppender,
    atomic_torch_save,
    atomic_write_text,
    environment_record,
    load_checkpoint,
    read_csv_records,
    unique_records,
)
from wbench.sharding import SHARD_DIR, ImageShards

CSV_FIELDS = ("index", "eps", "label", "prediction", "success", "abstain", "w1", "shrunk", "seconds")
CSV_FILE, SUMMARY_FILE, PLOT_FILE, GRID_FILE, EXAMPLES_FILE = (
    "attack.csv",
    "summary.json",
    "robust_accuracy.png",
    "examples.png",
    "examples.pt",
)
GRID_IMAGES = 8
#: Budgets spanning this factor or more are plotted on a logarithmic radius axis.
LOG_AXIS_SPAN = 10.0


@dataclass(frozen=True)
class AttackSettings:
    """Everything that determines an attack's rows (``batch_size`` does not, up to stopping tests)."""

    method: str = "flow"
    ground: str = "l1"
    steps: int | None = None
    seed: int = 0
    smoothing: str | None = None
    sigma: float | None = None
    noise_samples: int = 128
    predict_n: int = 10_000
    predict_alpha: float = 0.05
    batch_size: int = 16
    method_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", parse_option(AttackMethod, self.method, "method").value)
        object.__setattr__(self, "ground", parse_option(Ground, self.ground, "ground").value)
        if self.smoothing is not None:
            object.__setattr__(self, "smoothing", parse_option(Noise, self.smoothing, "smoothing").value)
            if not (isinstance(self.sigma, int | float) and math.isfinite(self.sigma) and self.sigma > 0):
                raise ValueError(f"--smoothing needs --sigma, a positive finite number; got {self.sigma!r}")
        elif self.sigma is not None:
            raise ValueError("--sigma needs --smoothing wasserstein|laplace")
        for name in ("batch_size", "noise_samples", "predict_n"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            raise ValueError(f"steps must be a positive integer, got {self.steps!r}")
        if not 0 < self.predict_alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.predict_alpha!r}")
        planned_steps(self.method, None, **self.method_options)  # an unknown preset, before run.json has it

    def identity(self) -> dict[str, Any]:
        """The settings that must match for a run to be resumed."""
        d = asdict(self)
        d.pop("batch_size")
        if self.smoothing is None:
            for k in ("noise_samples", "predict_n", "predict_alpha"):
                d.pop(k)
        return d


def parse_eps_list(spec: str) -> list[float]:
    """Budgets from ``"0.001,0.002"``: finite, positive, in the order given (duplicates dropped)."""
    try:
        values = [float(p) for p in spec.split(",") if p.strip()]
    except ValueError as exc:
        raise ValueError(f"malformed --eps {spec!r}; use comma-separated positive numbers") from exc
    if not values or any(not (math.isfinite(v) and v > 0) for v in values):
        raise ValueError(f"--eps must list positive finite W1 radii, got {spec!r}")
    return list(dict.fromkeys(values))


def _smoothing(settings: AttackSettings, model: nn.Module, num_classes: int, device):
    if settings.smoothing is None:
        return None
    from wbench.smoothing import LaplaceSmoothing, WassersteinSmoothing

    cls = WassersteinSmoothing if settings.smoothing == Noise.WASSERSTEIN else LaplaceSmoothing
    return cls(model, num_classes, settings.sigma, device=device, seed=settings.seed)


def attack_dataset(
    model: nn.Module,
    dataset: Sequence[tuple[torch.Tensor, int]],
    indices: Sequence[int],
    eps_list: Sequence[float],
    settings: AttackSettings,
    out_dir: str | os.PathLike,
    *,
    num_classes: int,
    device: torch.device,
    source: dict[str, Any] | None = None,
    certify_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Attack ``dataset[i]`` for every ``i`` in ``indices`` at every budget, resumably; return the summary.

    Under torchrun (:mod:`wbench.distributed`) the ranks share the pairs (module docstring);
    every rank returns rank 0's summary.

    Raises
    ------
    ValueError
        If another run holds ``out_dir``, it holds rows of other settings, ``certify_dir`` is
        not a certification of the same checkpoint with the same ground metric, or (under
        torchrun) the ranks were launched with different settings.
    """
    indices = list(dict.fromkeys(int(i) for i in indices))  # a repeated index is attacked once
    launch = _launch_record(settings, source, out_dir, indices)
    launch.update(eps=list(eps_list), certify_dir=None if certify_dir is None else str(certify_dir))
    dist.agree("attack settings", launch)
    with dist.output_lock(out_dir):
        out = Path(out_dir)
        record = _as_jsonable({"settings": settings.identity(), "source": source or {}})
        dist.on_main(_check_or_write_run, out, record, CSV_FILE)
        dist.on_main(read_attack_rows, out / CSV_FILE)  # a hand-edited row stops the run before any attack
        certified = (
            dist.on_main(_certified_rows, certify_dir, settings, source, indices) if certify_dir else None
        )
        _attack_rows(model, dataset, indices, eps_list, settings, out, num_classes, device, progress)
        return dist.on_main(write_summary, out, settings, indices, eps_list, dataset, certified, source)


def pair_key(row: dict[str, str]) -> tuple[int, float]:
    """The key of an ``attack.csv`` row: (data-set index, budget)."""
    return int(row["index"]), float(row["eps"])


_FIELD_TYPES = {"index": int, "eps": float, "label": int, "prediction": int, "success": int, "abstain": int,
                "w1": float, "shrunk": int, "seconds": float}  # fmt: skip


def _bad_field(row: dict[str, str]) -> str | None:
    """The first field of an ``attack.csv`` row that :func:`wbench.attack` cannot have written, or ``None``.

    A success is a prediction off the label, not an abstention, at exact W1 within the budget
    (:data:`wbench.attacks.core.W1_RTOL`), and every such row is a success.
    """
    v: dict[str, int | float] = {}
    for name, kind in _FIELD_TYPES.items():
        try:
            v[name] = kind(row[name])
        except (KeyError, ValueError):
            return name
    checks = {
        "index": v["index"] >= 0, "eps": math.isfinite(v["eps"]) and v["eps"] > 0, "label": v["label"] >= 0,
        "prediction": v["prediction"] >= -1, "success": v["success"] in (0, 1),
        "abstain": v["abstain"] == int(v["prediction"] == -1), "w1": math.isfinite(v["w1"]) and v["w1"] >= 0,
        "shrunk": v["shrunk"] in (0, 1), "seconds": math.isfinite(v["seconds"]) and v["seconds"] >= 0,
    }  # fmt: skip
    bad = next((k for k, ok in checks.items() if not ok), None)
    flip = v["prediction"] not in (v["label"], -1) and v["w1"] <= v["eps"] * (1 + W1_RTOL)
    return bad or (None if v["success"] == int(flip) else "success")


def read_attack_rows(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of an ``attack.csv``, one per (index, budget).

    A row repeated for one pair (equal but for ``seconds``) is counted once, with a
    :class:`~wbench.runio.RunWarning` that says so.

    Raises
    ------
    ValueError
        For a row :func:`wbench.attack` cannot have written (a non-finite or negative budget or
        W1, a success outside the exact W1 ball or with the label predicted, ...), or two rows
        of one pair that disagree; both name the file and line.
    """
    path = Path(path)
    records = read_csv_records(path)
    for line, row in records:
        bad = _bad_field(row)
        if bad is not None:
            raise ValueError(
                f"{path} line {line} is garbled ({bad} = {row.get(bad)!r}): "
                "delete that line and rerun to redo that image and budget"
            )
    return unique_records(path, records, pair_key, lambda key: f"image index {key[0]} at eps {key[1]!r}")


def _attack_rows(model, dataset, indices, eps_list, settings, out, num_classes, device, progress) -> None:
    from tqdm.auto import tqdm

    from wbench.attacks import attack

    smoothing = _smoothing(settings, model, num_classes, device)
    smooth_opts = (
        {"noise_samples": settings.noise_samples, "predict_n": settings.predict_n,
         "predict_alpha": settings.predict_alpha} if smoothing is not None else {}
    )  # fmt: skip
    shards = ImageShards(out / CSV_FILE, CSV_FIELDS, key=pair_key)
    examples_path = _examples_path(out)
    examples = _load_examples(out, examples_path)
    grid_indices = set(indices[:GRID_IMAGES])
    bs = settings.batch_size
    steps_per_batch = planned_steps(settings.method, settings.steps, **settings.method_options)
    with CsvAppender(shards.path, CSV_FIELDS) as appender:
        for eps in eps_list:
            mine, left = shards.split([(i, eps) for i in indices], chunk=bs)
            todo = [i for i, _ in mine]
            desc = f"{settings.method} eps={eps:g}" + (
                f" (rank 0 of {dist.world_size()}, {left} images in all)" if dist.active() else ""
            )
            batches = range(0, len(todo), bs)
            bar = tqdm(
                total=len(batches) * steps_per_batch, desc=desc, unit="iter",
                disable=not (progress and dist.is_main()),
            )  # fmt: skip
            advance = _BatchIterations(bar, steps_per_batch)
            for start in batches:
                chunk = todo[start : start + bs]

                x = torch.stack([torch.as_tensor(dataset[i][0]) for i in chunk]).to(device)
                y = torch.tensor([int(dataset[i][1]) for i in chunk], dtype=torch.int64, device=device)
                t0 = time.perf_counter()
                per_batch = {"indices": chunk} if smoothing is not None else {}
                res = attack(
                    model, x, y, eps, settings.method, ground=settings.ground, smoothing=smoothing,
                    steps=settings.steps, seed=settings.seed, progress=advance, **smooth_opts, **per_batch,
                    **settings.method_options,
                )  # fmt: skip
                advance.finish_batch()
                per = (time.perf_counter() - t0) / len(chunk)
                for k, i in enumerate(chunk):
                    appender.append(
                        {
                            "index": i, "eps": repr(eps), "label": int(y[k]),
                            "prediction": int(res.prediction[k]),
                            "success": int(res.success[k]), "abstain": int(res.abstain[k]),
                            "w1": repr(float(res.w1[k])), "shrunk": int(res.shrunk[k]),
                            "seconds": f"{per:.4f}",
                        }
                    )  # fmt: skip
                    if i in grid_indices:
                        examples[(i, eps)] = (x[k].cpu(), res.adversarial[k].cpu(), float(res.w1[k]))
                if grid_indices & set(chunk):
                    _save_examples(examples, examples_path)
            bar.close()
    dist.barrier()  # every rank has saved its examples
    dist.on_main(_merge_example_shards, out)
    shards.merge()


class _BatchIterations:
    """Progress callback of :func:`wbench.attack`: moves the bar by each attack iteration of a batch."""

    def __init__(self, bar, per_batch: int):
        self.bar, self.per_batch, self.shown = bar, per_batch, 0

    def __call__(self, iterations: int) -> None:
        self.shown += iterations
        self.bar.update(iterations)

    def finish_batch(self) -> None:
        """Count the iterations a batch skipped (all its images fooled early) and start the next."""
        self.bar.update(self.per_batch - self.shown)
        self.shown = 0


def _examples_path(out: Path) -> Path:
    """Where this rank keeps its grid images: ``examples.pt``, or its shard's file under torchrun."""
    if not dist.active():
        return out / EXAMPLES_FILE
    return out / SHARD_DIR / f"examples.rank{dist.rank()}.pt"


def _save_examples(examples: dict, path: Path) -> None:
    atomic_torch_save(
        {
            "examples": [
                {"index": i, "eps": e, "clean": c, "adversarial": a, "w1": w}
                for (i, e), (c, a, w) in examples.items()
            ]
        },
        path,
    )


def _load_examples(out: Path, *paths: Path) -> dict:
    """Grid images of ``examples.pt`` and of ``paths`` (later files add to earlier ones)."""
    examples = {}
    for path in dict.fromkeys((out / EXAMPLES_FILE, *paths)):
        if path.is_file():
            saved = load_checkpoint(path).get("examples")
            if not isinstance(saved, list):
                raise ValueError(
                    f"{path} holds no 'examples' list; delete it and rerun to redraw the example grid"
                )
            for d in saved:
                examples[(d["index"], d["eps"])] = (d["clean"], d["adversarial"], d["w1"])
    return examples


def _merge_example_shards(out: Path) -> None:
    """Rank 0: fold the ranks' grid images into ``examples.pt`` (atomic) and delete their files."""
    parts = sorted((out / SHARD_DIR).glob("examples.rank*.pt"))
    if parts:
        _save_examples(_load_examples(out, *parts), out / EXAMPLES_FILE)
        for path in parts:
            path.unlink()


def _certified_rows(certify_dir, settings: AttackSettings, source, indices) -> list[dict[str, str]]:
    from wbench.dataset_certification import RUN_FILE, read_certify_rows

    run_path = Path(certify_dir) / RUN_FILE
    if not run_path.is_file():
        raise ValueError(f"--certify-dir {certify_dir} holds no certify run ({RUN_FILE} missing)")
    run = json.loads(run_path.read_text())
    ground = run.get("settings", {}).get("ground")
    if ground != settings.ground:
        raise ValueError(
            f"--certify-dir certified W1 with {ground} ground; this attack uses {settings.ground}"
        )
    theirs = run.get("source", {}).get("checkpoint_sha256")
    ours = (source or {}).get("checkpoint_sha256")
    if theirs != ours:
        raise ValueError("--certify-dir certified a different checkpoint than the one attacked")
    rows = read_certify_rows(certify_dir, indices)
    if not rows:
        raise ValueError(f"--certify-dir {certify_dir} has no rows for the attacked images")
    return rows


def summarize(rows: Sequence[dict[str, str]], eps_list: Sequence[float]) -> list[dict[str, Any]]:
    """Per budget: images, empirical robust accuracy, flips, abstentions, W1 statistics, seconds.

    An image is robust at ``eps`` unless its attacked point, at exact W1 within ``eps``
    (:data:`wbench.attacks.core.W1_RTOL`), is predicted off the label (a flip or an abstention).
    """
    out = []
    for eps in eps_list:
        sel = [r for r in rows if float(r["eps"]) == eps]
        n = len(sel)
        inside = [r for r in sel if float(r["w1"]) <= eps * (1 + W1_RTOL)]  # beyond eps proves nothing
        correct = n - sum(int(r["prediction"]) != int(r["label"]) for r in inside)
        w1 = np.array([float(r["w1"]) for r in sel])
        sec = sum(float(r["seconds"]) for r in sel)
        out.append(
            {
                "eps": eps, "images": n, "robust_accuracy": correct / n if n else None,
                "successes": sum(int(r["success"]) for r in sel),
                "abstentions": sum(int(r["abstain"]) for r in inside),
                "shrunk": sum(int(r["shrunk"]) for r in sel),
                "max_w1_over_eps": float(w1.max() / eps) if n else None, "seconds": sec,
                "images_per_s": n / sec if sec > 0 else None,
            }
        )  # fmt: skip
    return out


def write_summary(out, settings, indices, eps_list, dataset, certified, source) -> dict[str, Any]:
    """Write ``summary.json`` (strict JSON, atomic), the robustness plot and the image grid."""
    wanted = {int(i) for i in indices}
    rows = [r for r in read_attack_rows(out / CSV_FILE) if int(r["index"]) in wanted]
    eps_sorted = sorted(set(eps_list))
    per_eps = summarize(rows, eps_sorted)
    masses = [float(torch.as_tensor(dataset[i][0]).sum()) for i in sorted(wanted)]
    mean_mass = float(np.mean(masses))
    summary = {
        "images": len(wanted),
        "per_eps": per_eps,
        "radius_units": f"W1 ({settings.ground} ground metric), normalised mass",
        "pixel_mass_units": "W1 times the image's total pixel mass (images in [0, 1]; Wong et al.'s epsilon)",
        "mean_image_mass": mean_mass,
        "settings": asdict(settings),
        "seed": settings.seed,
        "source": source or {},
        "environment": environment_record(),
    }
    if certified is not None:
        summary["certified"] = _certified_curve(certified, eps_sorted)
    atomic_write_text(
        out / SUMMARY_FILE, json.dumps(_as_jsonable(summary), indent=2, sort_keys=True, allow_nan=False)
    )
    from wbench.plots import plot_attack_examples, plot_robust_accuracy

    title = f"{settings.method} attack, {len(wanted)} images" + (
        f", {settings.smoothing} smoothing sigma={settings.sigma:g}"
        if settings.smoothing
        else ", base network"
    )
    curves = {"empirical robust accuracy (attack)": (eps_sorted, [p["robust_accuracy"] for p in per_eps])}
    cert = summary.get("certified")
    plot_robust_accuracy(
        curves, out / PLOT_FILE, certified=(cert["grid"], cert["certified_accuracy"]) if cert else None,
        mean_mass=mean_mass, title=title, xlabel=f"W1 radius ({settings.ground} ground, normalised mass)",
        log_x=log_axis(eps_sorted),
    )  # fmt: skip
    examples = _load_examples(out)
    if examples:
        plot_attack_examples(examples, out / GRID_FILE, max_images=GRID_IMAGES)
    return summary


def log_axis(eps_sorted: Sequence[float]) -> bool:
    """Whether budgets (ascending) span :data:`LOG_AXIS_SPAN` or more: plot them on a log axis."""
    return eps_sorted[-1] >= LOG_AXIS_SPAN * eps_sorted[0]


def _certified_curve(rows, eps_sorted) -> dict[str, Any]:
    from wbench.certification import certified_accuracy
    from wbench.dataset_certification import fine_radius_grid, row_arrays

    pred, correct, radius = row_arrays(rows)
    grid = fine_radius_grid(radius, np.asarray(eps_sorted))
    if log_axis(eps_sorted):  # the linear grid's first step would hide the small radii
        grid = np.union1d(grid, np.geomspace(eps_sorted[0] / 2, grid[-1], grid.size))
    acc = certified_accuracy(radius, correct, pred, grid)
    at_eps = certified_accuracy(radius, correct, pred, np.asarray(eps_sorted))
    return {
        "images": len(rows),
        "grid": [float(g) for g in grid],
        "certified_accuracy": [float(a) for a in acc],
        "certified_accuracy_at_eps": [float(a) for a in at_eps],
    }
