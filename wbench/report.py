"""``wbench report``: the end-to-end run on the embedded digits data set, in a few minutes on a CPU.

1. Train a Wasserstein-smoothed and a Laplace-smoothed classifier on scikit-learn's 8x8
   digits (Levine & Feizi, Appendix B: cross-entropy on noised images, one draw per image).
2. Certify a test subset with both (Cohen et al.'s CERTIFY, Theorem 1 / Corollary 1 radii).
3. Re-check Lemma 1 and Corollaries 1-3 numerically (:mod:`wbench.quickcheck`).
4. Write ``report.md``, the plot, ``summary.json`` and the run configuration to one folder.

Rerunning with the same folder reuses the trained models, the certificate rows and the
verification table. The sample counts are deliberately small (see :data:`FULL` and
:data:`QUICK`); ``report.md`` says what that costs.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from wbench.runio import atomic_write_json, atomic_write_text, environment_record, locked_output

REPORT_SIGMA = 0.01
#: settings of the default report: about 2-3 minutes on two CPU cores
FULL = {"epochs": 15, "max_images": 100, "n0": 100, "n": 1000, "alpha": 0.05}
#: ``--quick``: a smoke run in well under a minute (too few samples for meaningful radii)
QUICK = {"epochs": 2, "max_images": 12, "n0": 32, "n": 200, "alpha": 0.05}


def _verification(out: Path, seed: int) -> tuple[list[dict[str, Any]], bool]:
    from wbench.quickcheck import run_quick_verification

    path = out / "verification.json"
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("seed") == seed:
            return stored["rows"], True
    rows = run_quick_verification(seed=seed)
    atomic_write_json(path, {"seed": seed, "rows": rows})
    return rows, False


def run_report(
    out_dir: str, *, device: str = "auto", seed: int = 0, quick: bool = False, progress: bool = True
) -> Path:
    """Run the four steps (see the module docstring); return the path of ``report.md``.

    ``out_dir`` is locked for the whole run (:func:`wbench.runio.locked_output`): a second
    report into the same folder raises ``ValueError`` instead of interleaving with this one.
    """
    with locked_output(out_dir):
        return _report_in_locked_folder(out_dir, device=device, seed=seed, quick=quick, progress=progress)


def _report_in_locked_folder(out_dir: str, *, device: str, seed: int, quick: bool, progress: bool) -> Path:
    from wbench.certify_run import max_radius
    from wbench.devices import resolve_device
    from wbench.quickcheck import format_table
    from wbench.reproduce import ReproduceConfig, _settings, reproduce

    out = Path(out_dir)
    knobs = QUICK if quick else FULL
    config = ReproduceConfig(
        dataset="digits", out_dir=str(out), sigmas=(REPORT_SIGMA,), noises=("wasserstein", "laplace"),
        epochs=knobs["epochs"], n0=knobs["n0"], n=knobs["n"], alpha=knobs["alpha"],
        max_images=knobs["max_images"], seed=seed, device=device,
    )  # fmt: skip
    t0 = time.perf_counter()
    result = reproduce(config, progress=progress)
    t1 = time.perf_counter()
    rows, reused = _verification(out, seed)
    t2 = time.perf_counter()
    cfg = config.resolved()
    r_cap = {z: max_radius(_settings(cfg, z, REPORT_SIGMA)) for z in cfg.noises}
    verification_ok = all(r["status"] == "PASS" for r in rows)
    summary = {
        "report": "wbench report (digits)",
        "quick": quick,
        "seed": seed,
        "device": str(resolve_device(device)),
        "sigma": REPORT_SIGMA,
        "settings": knobs,
        "radius_units": result["radius_units"],
        "radii": result["radii"],
        "max_certifiable_radius": r_cap,
        "runs": result["runs"],
        "verification": {"all_pass": verification_ok, "rows": rows, "reused": reused},
        "seconds_this_invocation": {"train_and_certify": t1 - t0, "verification": t2 - t1},
        "environment": environment_record(),
    }
    atomic_write_json(out / "summary.json", summary)
    atomic_write_json(out / "run_config.json", {"reproduce_config": asdict(cfg), "report_settings": knobs})
    report = _markdown(result, summary, format_table(rows, markdown=True))
    path = out / "report.md"
    atomic_write_text(path, report)
    return path


def _markdown(result: dict[str, Any], summary: dict[str, Any], verification_table: str) -> str:
    """``report.md``: the sections below, in order."""
    runs = {r["noise"]: r for r in result["runs"]}
    w, lap = runs["wasserstein"], runs["laplace"]
    lines = [
        *_intro(summary, w),
        *_settings_section(summary, w),
        *_accuracy_section(result, w, lap),
        *_verification_section(summary, verification_table),
        *_run_section(summary, w, lap),
    ]
    return "\n".join(lines)


def _intro(summary: dict[str, Any], w: dict[str, Any]) -> list[str]:
    """The title, and what was trained and certified."""
    return [
        "# wbench report: Wasserstein smoothing on the embedded digits data set",
        "",
        "Levine & Feizi (AISTATS 2020) certify robustness to Wasserstein (W1) perturbations by smoothing a "
        "classifier with Laplace noise on local flow plans (Theorem 1). This report trains two base "
        "classifiers on scikit-learn's 8x8 handwritten digits (1437 training / 360 test images), one with "
        "flow-space (Wasserstein) noise and one with i.i.d. pixel Laplace noise (the baseline), both with "
        f"sigma = {summary['sigma']:g} in units of normalised mass, and certifies the first "
        f"{w['images']} test images with both.",
        "",
    ]


def _settings_section(summary: dict[str, Any], w: dict[str, Any]) -> list[str]:
    """The training and certification settings, and the radius cap and error bars they imply."""
    s = summary["settings"]
    return [
        "## Settings, and what they cost",
        "",
        f"- Training: `digits_cnn`, {s['epochs']} epochs of SGD with momentum, one noise draw per image.",
        f"- Certification: Cohen et al.'s CERTIFY with n0 = {s['n0']}, n = {s['n']}, alpha = {s['alpha']}; "
        "abstain when the lower bound p_A < 1/2 (the `cohen` convention).",
        f"- The paper used n0 = 1000 and n = 10000. With n = {s['n']} the lower bound p_A cannot exceed "
        f"alpha^(1/n) = {s['alpha'] ** (1 / s['n']):.5f}, so no radius above "
        f"{summary['max_certifiable_radius']['wasserstein']:.4g} (Wasserstein) or "
        f"{summary['max_certifiable_radius']['laplace']:.4g} (Laplace baseline, Corollary 1 halves it) can "
        "be certified here, and radii are typically smaller than a run with more samples would give. "
        f"Only {w['images']} test images are certified, so each accuracy has a binomial standard error "
        f"of up to {50 / max(w['images'], 1) ** 0.5:.0f} percentage points. These numbers show the pipeline "
        "working on a small problem, not the paper's results; "
        "`wbench reproduce --dataset mnist` runs the paper's settings on a GPU."
        + (
            " This is a `--quick` smoke run: the models are trained for only a few epochs, so low "
            "accuracies here say nothing about the method."
            if summary["quick"]
            else ""
        ),
        "- Radii are W1 distances with the L1 ground metric between normalised images (total mass 1).",
        "",
    ]


def _accuracy_section(result: dict[str, Any], w: dict[str, Any], lap: dict[str, Any]) -> list[str]:
    """The certified-accuracy table, how to read it, and the smoothed and base accuracies."""
    return [
        "## Certified accuracy (%) at W1 radius",
        "",
        result["table"],
        "",
        "`clean acc.` is the certified accuracy at radius 0: the fraction of images whose CERTIFY "
        "prediction is correct and not abstained (an abstention counts as wrong). `mean radius` is the "
        "certified radius averaged over all images, counting wrong and abstained images as 0. Radius "
        "columns give the fraction certified correct at a W1 radius of at least r.",
        "",
        f"Smoothed clean accuracy: Wasserstein {100 * w['clean_smoothed_accuracy']:.1f}%, Laplace baseline "
        f"{100 * lap['clean_smoothed_accuracy']:.1f}%; "
        f"abstentions: {w['abstentions']} and {lap['abstentions']}. "
        f"Base-classifier test accuracy with one noise draw: Wasserstein "
        f"{_pct(w['train_test_accuracy_noisy'])}, Laplace {_pct(lap['train_test_accuracy_noisy'])}.",
        "",
        "![certified accuracy vs radius](certified_accuracy.png)",
        "",
    ]


def _verification_section(summary: dict[str, Any], verification_table: str) -> list[str]:
    """The :mod:`wbench.quickcheck` table and its verdict."""
    return [
        "## Numerical re-check of Lemma 1 and Corollaries 1-3 (`wbench.quickcheck`)",
        "",
        verification_table,
        "",
        (
            "All claims pass."
            if summary["verification"]["all_pass"]
            else "**Some claims FAIL: see the table.**"
        )
        + " Theorem 1 itself (closed-form Laplace cases, the proof's additivity, and an attack inside "
        "certified balls) is checked by `pytest verify/test_theorem1.py`.",
        "",
    ]


def _run_section(summary: dict[str, Any], w: dict[str, Any], lap: dict[str, Any]) -> list[str]:
    """Seed, device, throughput, time taken, versions and the files written."""
    env = summary["environment"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
    timing = summary["seconds_this_invocation"]
    return [
        "## Run",
        "",
        f"- Seed {summary['seed']}; device {summary['device']}; "
        f"throughput {w['noise_samples_per_s']:.0f} (Wasserstein) and {lap['noise_samples_per_s']:.0f} "
        "(Laplace) noise samples/s during certification.",
        f"- This invocation: {timing['train_and_certify']:.0f} s training and certifying, "
        f"{timing['verification']:.1f} s verification (finished parts of earlier runs are reused).",
        f"- Python {env['python']}; {versions}.",
        "- Files: `results.md`, `certified_accuracy.png`, `summary.json`, `run_config.json`, "
        "`reproduce.json`, `verification.json`, `train/*/checkpoint.pt`, `certify/*/certify.csv`.",
        "",
    ]


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"
