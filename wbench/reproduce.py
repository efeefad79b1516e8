"""Reproduce the structure of Levine & Feizi's certified-accuracy tables (Table 1 for MNIST).

For every sigma of a grid and both noises (Wasserstein smoothing and the Laplace pixel
baseline) a base classifier is trained with matching noise (Appendix B), a test subset is
certified (Cohen et al.'s CERTIFY), and certified accuracy vs W1 radius is tabulated and
plotted. Everything is resumable: finished checkpoints and certificate rows are reused.

Defaults per data set:

- ``mnist``: the paper's sigma grid {0.005, ..., 0.5}, the ``levine_mnist`` training preset,
  n0 = 1000, n = 10000, alpha = 0.05 (the authors' settings; needs a GPU for the full test set);
- ``cifar10``: {5e-5, ..., 1e-3}, ``levine_cifar``, the same sample counts;
- ``digits`` (embedded, CPU): a reduced grid {0.005, 0.02, 0.05}, 15 epochs, 100 test images,
  n0 = 100, n = 1000, so the whole run takes minutes on two cores. With n = 1000 and
  alpha = 0.05 the largest certifiable radius is ``sigma/(2 sqrt 2) ln(p/(1-p))`` at
  ``p = 0.05**(1/1000)``, i.e. about 2.05 sigma (Wasserstein, L1 ground).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wbench import distributed as dist
from wbench.certification import certified_accuracy, resolve_ground
from wbench.dataset_certification import (
    CertifySettings,
    certify_dataset,
    check_radius_grid,
    file_sha256,
    fine_radius_grid,
    max_radius,
    parse_indices,
    read_certify_rows,
    round_below,
    row_arrays,
)
from wbench.options import Noise, parse_option
from wbench.runio import atomic_write_json, atomic_write_text, environment_record

PAPER_SIGMAS: dict[str, tuple[float, ...]] = {
    "mnist": (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5),
    "cifar10": (5e-5, 1e-4, 2e-4, 5e-4, 1e-3),
    "digits": (0.005, 0.02, 0.05),
}
PRESET_FOR = {"mnist": "levine_mnist", "cifar10": "levine_cifar", "digits": "digits_quick"}
#: (epochs, milestones, max_images, n0, n) when not given; None keeps the preset / whole split
DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": {"epochs": 15, "milestones": (10,), "max_images": 100, "n0": 100, "n": 1000},
    "mnist": {"epochs": None, "milestones": None, "max_images": None, "n0": 1000, "n": 10000},
    "cifar10": {"epochs": None, "milestones": None, "max_images": None, "n0": 1000, "n": 10000},
}
NOISE_LABEL = {"wasserstein": "Wasserstein", "laplace": "Laplace baseline"}


@dataclass
class ReproduceConfig:
    """One reproduction run; ``None`` fields take the data set's defaults (see the module docstring).

    ``ground=None`` takes the convention's: L1 for ``"cohen"``, L2 for ``"authors"``
    (:func:`wbench.certification.resolve_ground`).

    ``checkpoints`` maps ``"noise:sigma"`` (e.g. ``"wasserstein:0.01"``) to an existing checkpoint,
    which is certified instead of training one.
    """

    dataset: str = "digits"
    out_dir: str = "runs/reproduce"
    sigmas: tuple[float, ...] | None = None
    noises: tuple[str, ...] = ("wasserstein", "laplace")
    epochs: int | None = None
    n0: int | None = None
    n: int | None = None
    alpha: float = 0.05
    max_images: int | None = None
    skip: int = 1
    ground: str | None = None
    convention: str = "cohen"
    seed: int = 0
    device: str = "auto"
    batch_size: int = 1000
    data_root: str | None = None
    radii: tuple[float, ...] | None = None
    checkpoints: dict[str, str] = field(default_factory=dict)

    def resolved(self) -> ReproduceConfig:
        """A copy with every ``None`` default filled in and options validated."""
        if self.dataset not in PAPER_SIGMAS:
            raise ValueError(f"unknown dataset {self.dataset!r}; expected one of {', '.join(PAPER_SIGMAS)}")
        d = DEFAULTS[self.dataset]
        noises = tuple(parse_option(Noise, z, "noise").value for z in self.noises)
        if not noises:
            raise ValueError("give at least one noise")
        sigmas = tuple(float(s) for s in (self.sigmas or PAPER_SIGMAS[self.dataset]))
        if not sigmas or any(not (math.isfinite(s) and s > 0) for s in sigmas):
            raise ValueError(f"sigmas must be positive finite numbers, got {sigmas}")
        radii = None if self.radii is None else tuple(float(r) for r in check_radius_grid(self.radii))
        if self.max_images is not None and self.max_images < 1:
            raise ValueError(f"--max must be >= 1, got {self.max_images}")
        ground = resolve_ground(self.ground, self.convention).value
        out = ReproduceConfig(
            **{**asdict(self), "sigmas": sigmas, "noises": noises, "ground": ground, "radii": radii}
        )
        out.epochs = self.epochs if self.epochs is not None else d["epochs"]
        out.n0 = self.n0 if self.n0 is not None else d["n0"]
        out.n = self.n if self.n is not None else d["n"]
        out.max_images = self.max_images if self.max_images is not None else d["max_images"]
        for key in self.checkpoints:
            noise, _, sigma = key.partition(":")
            if parse_option(Noise, noise, "noise").value not in noises or float(sigma) not in sigmas:
                raise ValueError(f"checkpoint key {key!r} matches no (noise, sigma) of this run")
        return out


def run_key(noise: str, sigma: float) -> str:
    """Folder name of one (noise, sigma) run."""
    return f"{noise}_sigma{sigma:g}"


def train_or_reuse(config: ReproduceConfig, noise: str, sigma: float, *, progress: bool = True) -> str:
    """Path of a checkpoint trained with ``noise`` at ``sigma``: given, finished, resumed or trained now."""
    from wbench.training import PRESETS, TrainConfig, train

    given = {f"{parse_option(Noise, k.partition(':')[0], 'noise').value}:{float(k.partition(':')[2]):g}": v
             for k, v in config.checkpoints.items()}  # fmt: skip
    key = f"{noise}:{sigma:g}"
    if key in given:
        return given[key]
    preset = dict(PRESETS[PRESET_FOR[config.dataset]])
    if config.epochs is not None:
        preset["epochs"] = config.epochs
        milestones = DEFAULTS[config.dataset]["milestones"]
        if milestones is not None and all(m < config.epochs for m in milestones):
            preset["milestones"] = milestones
        else:
            preset["milestones"] = tuple(m for m in preset.get("milestones", ()) if m < config.epochs)
    train_cfg = TrainConfig(
        **{
            **preset,
            "dataset": config.dataset,
            "noise": noise,
            "sigma": sigma,
            "seed": config.seed,
            "device": config.device,
            "data_root": config.data_root,
            "out_dir": str(Path(config.out_dir) / "train" / run_key(noise, sigma)),
        }
    )
    return train(train_cfg, resume=True, progress=progress)["checkpoint"]


def _radius_grid(config: ReproduceConfig, points: int = 8) -> np.ndarray:
    """0 and a geometric grid up to just below the largest certifiable radius (2 significant digits).

    Every point lies strictly below the radius it was taken from (:func:`round_below`), so
    images certified at a sample-count cap count there whatever the rounding of their radius.
    """
    if config.radii:
        return np.asarray(sorted(config.radii), dtype=np.float64)
    r_hi = max(max_radius(_settings(config, z, s)) for z in config.noises for s in config.sigmas)
    r_lo = min(max_radius(_settings(config, z, s)) for z in config.noises for s in config.sigmas) / 4
    grid = np.geomspace(r_lo, r_hi, points - 1)
    return np.concatenate([[0.0], [round_below(r, 2) for r in grid]])


def _settings(config: ReproduceConfig, noise: str, sigma: float) -> CertifySettings:
    return CertifySettings(
        sigma=sigma, noise=noise, n0=config.n0, n=config.n, alpha=config.alpha, ground=config.ground,
        convention=config.convention, seed=config.seed, batch_size=config.batch_size,
    )  # fmt: skip


def reproduce(config: ReproduceConfig, *, progress: bool = True) -> dict[str, Any]:
    """Train (or reuse), certify and tabulate every (noise, sigma); write the table, plot and JSON.

    Returns
    -------
    dict
        ``config``, ``radii``, ``runs`` (one summary per (noise, sigma)), ``table`` (Markdown),
        ``files`` (paths written) and ``environment``.

    Raises
    ------
    ValueError
        If another run holds ``config.out_dir`` (:func:`wbench.runio.locked_output`) or one of
        the folders inside it, or the configuration is invalid.
    """
    config = config.resolved()
    dist.agree("reproduction settings", asdict(config))
    with dist.output_lock(config.out_dir):
        return _reproduce_in_locked_folder(config, progress=progress)


def _reproduce_in_locked_folder(config: ReproduceConfig, *, progress: bool) -> dict[str, Any]:
    from wbench.data import dataset_info, load_dataset
    from wbench.models import load_model

    out = Path(config.out_dir)
    device = dist.local_device(config.device)
    test_set = load_dataset(config.dataset, "test", root=config.data_root)
    indices = parse_indices(None, len(test_set), max_count=config.max_images, skip=config.skip)
    num_classes = int(dataset_info(config.dataset)["num_classes"])
    radii = _radius_grid(config)
    runs = []
    for sigma in config.sigmas:
        for noise in config.noises:
            ckpt_path = train_or_reuse(config, noise, sigma, progress=progress)
            model, ckpt = load_model(ckpt_path, device)
            settings = _settings(config, noise, sigma)
            run_dir = out / "certify" / run_key(noise, sigma)
            source = {"checkpoint_sha256": file_sha256(ckpt_path), "dataset": config.dataset, "split": "test"}
            summary = certify_dataset(
                model, test_set, indices, settings, run_dir, num_classes=num_classes, device=device,
                source=source, radii=radii, progress=progress,
            )  # fmt: skip
            metrics = ckpt.get("metrics") or []
            runs.append(
                {
                    "noise": noise,
                    "sigma": sigma,
                    "checkpoint": str(ckpt_path),
                    "train_test_accuracy": metrics[-1].get("test_acc") if metrics else None,
                    "train_test_accuracy_noisy": metrics[-1].get("test_acc_noisy") if metrics else None,
                    "certify_dir": str(run_dir),
                    **{k: summary[k] for k in _SUMMARY_KEYS},
                }
            )
    table = format_results_table(runs, radii)
    files = {"table": str(out / "results.md"), "plot": str(out / "certified_accuracy.png"),
             "json": str(out / "reproduce.json")}  # fmt: skip
    result = {
        "config": asdict(config),
        "radii": [float(r) for r in radii],
        "radius_units": f"W1 ({config.ground} ground metric), normalised mass",
        "images": len(indices),
        "runs": runs,
        "table": table,
        "files": files,
        "environment": environment_record(),
    }
    dist.on_main(_write_results, result, config, indices)
    return result


def _write_results(result: dict[str, Any], config: ReproduceConfig, indices: Sequence[int]) -> None:
    """The Markdown table, the plot of every run and ``reproduce.json`` (rank 0 under torchrun)."""
    files = result["files"]
    atomic_write_text(files["table"], result["table"] + "\n")
    plot_runs(
        result["runs"],
        files["plot"],
        title=f"{config.dataset}: {len(indices)} test images, n0={config.n0}, n={config.n}, "
        f"alpha={config.alpha}",
        indices=indices,
        xlabel=f"certified W1 radius ({config.ground} ground metric, normalised mass)",
    )
    atomic_write_json(files["json"], result)


_SUMMARY_KEYS = (
    "images", "certified_accuracy", "clean_smoothed_accuracy", "mean_certified_radius", "abstentions",
    "noise_samples_per_s", "seconds", "max_certifiable_radius",
)  # fmt: skip


def format_results_table(runs: Sequence[Mapping[str, Any]], radii: Sequence[float]) -> str:
    """Markdown: a row per (noise, sigma) of certified accuracy (%) at each radius, plus the best sigma."""
    head = ["smoothing", "sigma", "clean acc.", "mean radius", *(f"r={r:.2g}" for r in radii)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in runs:
        cells = [
            NOISE_LABEL[run["noise"]],
            f"{run['sigma']:g}",
            f"{100 * run['clean_smoothed_accuracy']:.1f}",
            f"{run['mean_certified_radius']:.3g}",
            *(f"{100 * a:.1f}" for a in run["certified_accuracy"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    for noise in dict.fromkeys(r["noise"] for r in runs):
        mine = [r for r in runs if r["noise"] == noise]
        if len(mine) > 1:
            best = np.max([r["certified_accuracy"] for r in mine], axis=0)
            cells = [
                f"**{NOISE_LABEL[noise]}, best sigma**",
                "",
                "",
                "",
                *(f"**{100 * a:.1f}**" for a in best),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_runs(
    runs: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    *,
    title: str = "",
    indices: Sequence[int] | None = None,
    xlabel: str | None = None,
) -> None:
    """One curve per sigma (solid: Wasserstein, dashed: Laplace baseline) on a fine radius grid.

    ``indices`` restricts every curve to those images (default: all rows of each run's CSV),
    matching the summaries that :func:`certify_dataset` returns.
    """
    from wbench.plots import plot_certified_accuracy

    arrays = [row_arrays(read_certify_rows(run["certify_dir"], indices)) for run in runs]
    grid = fine_radius_grid(*(radius for _pred, _correct, radius in arrays))
    sigma_index = {s: i for i, s in enumerate(dict.fromkeys(run["sigma"] for run in runs))}
    curves, styles, caps = {}, {}, {}
    for run, (pred, correct, radius) in zip(runs, arrays, strict=True):
        label = f"{NOISE_LABEL[run['noise']]}, sigma={run['sigma']:g}"
        curves[label] = (grid, certified_accuracy(radius, correct, pred, grid))
        caps[label] = run["max_certifiable_radius"]
        styles[label] = {
            "linestyle": "-" if run["noise"] == Noise.WASSERSTEIN else "--",
            "color": f"C{sigma_index[run['sigma']] % 10}",
        }
    extra = {} if xlabel is None else {"xlabel": xlabel}
    plot_certified_accuracy(curves, path, title=title, styles=styles, caps=caps, **extra)
