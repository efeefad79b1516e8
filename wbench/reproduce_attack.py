"""The empirical side of ``wbench reproduce --attack``: attack every smoothed classifier of a run.

Levine & Feizi measure a smoothed classifier twice: a certificate, a *lower* bound on its robust
accuracy at each W1 radius (Theorem 1), and attacks, an *upper* bound (Appendix C, Figure 7). For
each (noise, sigma) of a reproduction and each method of ``attack``, the smoothed classifier of that
run (that noise at that sigma, the run's seed: :class:`~wbench.WassersteinSmoothing` or
:class:`~wbench.LaplaceSmoothing`) is attacked on the first ``attack_images`` certified test images at
every budget of ``attack_eps`` by :func:`wbench.dataset_attack.attack_dataset`: gradients of the
noise-averaged loss (``attack_noise_samples`` draws each), success decided by PREDICT with
``attack_n`` samples at level ``attack_alpha`` (defaults: :data:`ATTACK_DEFAULTS`, and the
certification's n and alpha). Each attack folder ``OUT/attack/<run_key>/<method>/``
is resumable, locked and sharded under torchrun as ``wbench attack``'s, and draws the run's own
certified curve (its certify folder) in its ``robust_accuracy.png``.

Budgets share the unit of the certified radii (W1 between normalised images under the run's ground
metric). The default grid, :func:`default_attack_eps`, is geometric from a quarter of the smallest
largest-certifiable radius of the run (:func:`wbench.dataset_certification.max_radius`: what n
samples can certify at all) to :data:`EPS_REACH` = 20 times the largest one. Both ends matter: on
the 8x8 digits models attacks first succeed at 10-30 times the certified radii (measured with the
authors' attack code and Wong et al.'s projected Sinkhorn), so a grid that stops at the cap would
show an empirical curve flat at the clean accuracy; and the budgets at and below the cap are where
a successful attack would contradict a certificate (:func:`broken_certificates`).

Two bounds are tabulated per budget ``eps`` (accuracy counts an abstention as wrong, as certified
accuracy does):

- per method, the empirical robust accuracy at ``eps`` (the images whose attacked prediction is
  still the label), an upper bound, beside the certified accuracy at ``eps`` of the same images;
- over all methods and every budget ``eps' <= eps`` (the ball of ``eps'`` lies inside the ball of
  ``eps``, so an adversarial example found at ``eps'`` counts at ``eps``): the tightest upper bound
  of the run, non-increasing in ``eps`` by construction. A single heuristic attack's curve need
  not be: each budget is a separate optimisation.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wbench import distributed as dist
from wbench.certification import ABSTAIN, certified_accuracy
from wbench.dataset_attack import CSV_FILE, AttackSettings, attack_dataset
from wbench.dataset_certification import read_certify_rows, row_arrays
from wbench.runio import read_csv_rows

#: Per data set, what is not given: attacked images (the first ones certified), noise draws per
#: gradient of the smoothed loss and iterations (``None``: each method's preset, flow 100,
#: frank_wolfe 300, sinkhorn 200). MNIST and CIFAR-10 (a GPU) take the authors' 128 draws
#: (``smooth_pgd``) and the presets. The CPU data sets take a cheap attack that loses little:
#: on the digits Wasserstein sigma = 0.02 model (16 test images, PREDICT n = 1000, alpha = 0.05)
#: 20 steps with 16 draws left the same number of images robust as 100 steps with 16 draws or
#: 20 steps with 64 draws at eps = 0.2 and 0.6 for frank_wolfe, and within one image for flow
#: (eps 0.05, 0.2, 0.6), at a fifth of the time; PREDICT's n samples per image and budget then
#: cost as much as the attack itself.
ATTACK_DEFAULTS: dict[str, dict[str, int | None]] = {
    "digits": {"images": 10, "noise_samples": 16, "steps": 20},
    "mnist5k": {"images": 10, "noise_samples": 16, "steps": 20},
    "mnist": {"images": 100, "noise_samples": 128, "steps": None},
    "cifar10": {"images": 100, "noise_samples": 128, "steps": None},
}
#: Points of the default budget grid and how far past the largest certifiable radius it reaches.
EPS_POINTS, EPS_REACH = 7, 20.0
#: An attack's W1 may exceed its budget by this relative amount (:data:`wbench.attacks.core.W1_RTOL`).
W1_RTOL = 1e-6
#: Marker and line per attack method in ``robustness.png`` (hollow markers stay visible where
#: methods agree).
METHOD_STYLES = {
    "flow": {"marker": "o", "linestyle": "--"},
    "frank_wolfe": {"marker": "s", "linestyle": ":", "markerfacecolor": "none", "markersize": 9},
    "sinkhorn": {"marker": "^", "linestyle": "-.", "markerfacecolor": "none", "markersize": 9},
}
TABLE_TITLE = "Empirical robust accuracy (attacks on the smoothed classifiers)"


def default_attack_eps(
    caps: Sequence[float], points: int = EPS_POINTS, reach: float = EPS_REACH
) -> tuple[float, ...]:
    """``points`` geometric budgets from ``min(caps) / 4`` to ``reach * max(caps)``, 2 significant digits.

    ``caps`` are the largest certifiable radii of the runs (module docstring).
    """
    lo, hi = min(caps) / 4, reach * max(caps)
    return tuple(dict.fromkeys(float(f"{r:.2g}") for r in np.geomspace(lo, hi, points)))


def attack_settings(config: Any, method: str, noise: str, sigma: float) -> AttackSettings:
    """The attack of ``method`` on the smoothed classifier of (``noise``, ``sigma``) of a resolved config."""
    return AttackSettings(
        method=method, ground=config.ground, steps=config.attack_steps, seed=config.seed, smoothing=noise,
        sigma=sigma, noise_samples=config.attack_noise_samples, predict_n=config.attack_n,
        predict_alpha=config.attack_alpha,
    )  # fmt: skip


def attack_run(
    config: Any,
    model: torch.nn.Module,
    test_set: Any,
    indices: Sequence[int],
    noise: str,
    sigma: float,
    certify_dir: str | os.PathLike,
    *,
    source: Mapping[str, Any],
    num_classes: int,
    device: torch.device,
    progress: bool = True,
) -> dict[str, Any]:
    """Attack the smoothed classifier of one (noise, sigma) with every method, against its certificates.

    Returns
    -------
    dict
        ``attacks``: per method, :func:`method_record`; ``attack_upper_bound``:
        :func:`upper_bound`. Every rank returns rank 0's.
    """
    from wbench.reproduce import run_key

    out = Path(config.out_dir) / "attack" / run_key(noise, sigma)
    attacks = {}
    for method in config.attack:
        folder = out / method
        settings = attack_settings(config, method, noise, sigma)
        summary = attack_dataset(
            model, test_set, indices, config.attack_eps, settings, folder, num_classes=num_classes,
            device=device, source=dict(source), certify_dir=certify_dir, progress=progress,
        )  # fmt: skip
        attacks[method] = (folder, summary)
    return dist.on_main(_summarise, attacks, certify_dir, indices, config.attack_eps)


def _summarise(attacks, certify_dir, indices, eps_list) -> dict[str, Any]:
    cert_rows = read_certify_rows(certify_dir, indices)
    wanted = {int(i) for i in indices}
    rows = {
        m: [r for r in read_csv_rows(Path(folder) / CSV_FILE) if int(r["index"]) in wanted]
        for m, (folder, _summary) in attacks.items()
    }
    return {
        "attacks": {
            m: method_record(folder, summary, rows[m], cert_rows) for m, (folder, summary) in attacks.items()
        },
        "attack_upper_bound": upper_bound(rows, cert_rows, eps_list),
    }


def method_record(
    folder: str | os.PathLike,
    summary: Mapping[str, Any],
    rows: Sequence[Mapping[str, str]],
    cert_rows: Sequence[Mapping[str, str]],
) -> dict[str, Any]:
    """What ``reproduce.json`` keeps of one attack: its summary per budget, the certified accuracy at
    each budget (same images) and the broken certificates (:func:`broken_certificates`)."""
    return {
        "attack_dir": str(folder),
        "images": summary["images"],
        "mean_image_mass": summary["mean_image_mass"],
        "settings": summary["settings"],
        "per_eps": summary["per_eps"],
        "certified_accuracy_at_eps": summary["certified"]["certified_accuracy_at_eps"],
        "broken_certificates": broken_certificates(rows, cert_rows),
    }


def broken_certificates(
    rows: Sequence[Mapping[str, str]], cert_rows: Sequence[Mapping[str, str]]
) -> list[dict[str, Any]]:
    """The attack rows that succeed where the certificate holds: a correct, certified image at a
    budget no larger than its certified radius.

    Theorem 1 (with CERTIFY's and PREDICT's own error level alpha each) says there is none; an
    entry is a counterexample to check (index, budget, exact W1 of the adversarial example,
    certified radius).
    """
    cert = {int(r["index"]): r for r in cert_rows}
    broken = []
    for r in rows:
        c = cert.get(int(r["index"]))
        if c is None or not int(r["success"]):
            continue
        holds = (
            int(c["correct"]) and int(c["prediction"]) != ABSTAIN and float(c["radius"]) >= float(r["eps"])
        )
        if holds:
            broken.append(
                {"index": int(r["index"]), "eps": float(r["eps"]), "w1": float(r["w1"]),
                 "certified_radius": float(c["radius"])}
            )  # fmt: skip
    return broken


def upper_bound(
    rows: Mapping[str, Sequence[Mapping[str, str]]],
    cert_rows: Sequence[Mapping[str, str]],
    eps_list: Sequence[float],
) -> dict[str, Any]:
    """The tightest upper bound of a run: over every method and every budget ``<= eps``.

    An image counts as robust at ``eps`` unless some attack row at a budget ``eps' <= eps`` left its
    prediction off the label (a flip or an abstention) at a point of W1 ``<= eps' (1 + 1e-6)``.
    ``gap`` is this bound minus the certified accuracy at ``eps`` (same images): the width of the
    interval in which the true robust accuracy lies.
    """
    eps_sorted = sorted(set(float(e) for e in eps_list))
    images = sorted(int(r["index"]) for r in cert_rows)
    first_broken = dict.fromkeys(images, math.inf)  # the smallest budget at which an attack got through
    for method_rows in rows.values():
        for r in method_rows:
            eps, i = float(r["eps"]), int(r["index"])
            if (
                int(r["prediction"]) != int(r["label"])
                and float(r["w1"]) <= eps * (1 + W1_RTOL)
                and i in first_broken
            ):
                first_broken[i] = min(first_broken[i], eps)
    firsts = np.array([first_broken[i] for i in images], dtype=np.float64)
    robust = [float(np.mean(firsts > e)) for e in eps_sorted]
    pred, correct, radius = row_arrays(cert_rows)
    cert = [float(a) for a in certified_accuracy(radius, correct, pred, np.asarray(eps_sorted))]
    return {
        "eps": eps_sorted,
        "images": len(images),
        "robust_accuracy": robust,
        "certified_accuracy": cert,
        "gap": [u - c for u, c in zip(robust, cert, strict=True)],
        "methods": sorted(rows),
    }


def format_attack_markdown(config: Any, runs: Sequence[Mapping[str, Any]], mass: float) -> str:
    """The results.md section: a table per method and the tightest bounds over all methods.

    ``mass``: the mean total pixel mass of the attacked images, for the pixel-mass column labels.
    """
    from wbench.reproduce import NOISE_LABEL

    eps = sorted(config.attack_eps)
    head = ["smoothing", "sigma", *(f"eps={e:.2g} (px {e * mass:.2g})" for e in eps)]
    sep = "|" + "---|" * len(head)
    first = next(iter(runs[0]["attacks"].values())) if runs else {}
    counts = first.get("settings", {})
    lines = [
        f"## {TABLE_TITLE}",
        "",
        f"The first {config.attack_images} of the certified test images of every run, attacked at each "
        f"budget eps (W1, {config.ground} ground, normalised mass; `px` is eps times the mean image mass "
        f"{mass:.3g}, pixel mass with pixels in [0, 1], Wong et al.'s epsilon) through the smoothed "
        f"classifier of that run (its noise and sigma, seed {config.seed}): gradients of the noise-averaged "
        f"loss over {counts.get('noise_samples')} draws, success by PREDICT with n = "
        f"{counts.get('predict_n')}, alpha = {counts.get('predict_alpha')}; "
        f"steps: {config.attack_steps or 'each method preset'}. Each cell is "
        "**empirical / certified** accuracy (%) on the same images: the attack's robust accuracy (the "
        "attacked prediction is still the label) is an *upper* bound, the certified accuracy a *lower* "
        "bound on the true robust accuracy. Abstentions count as wrong in both. A single attack's "
        "curve need not fall with eps (each budget is a separate optimisation).",
        "",
    ]
    for method in config.attack:
        lines += [f"### {method}", "", "| " + " | ".join(head) + " |", sep]
        for run in runs:
            rec = run["attacks"][method]
            cells = [
                f"{_pct(p['robust_accuracy'])} / {_pct(c)}"
                for p, c in zip(rec["per_eps"], rec["certified_accuracy_at_eps"], strict=True)
            ]
            lines.append(f"| {NOISE_LABEL[run['noise']]} | {run['sigma']:g} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "### All methods, every budget up to eps: certified (lower) to empirical (upper) bound, and the gap",
        "",
        "An image counts as broken at eps if any method found an adversarial example at any budget "
        "<= eps (that ball lies inside the eps ball), so this bound cannot rise with eps. The gap, in "
        "percentage points, is the width of the interval that holds the true robust accuracy (a "
        "negative gap would mean PREDICT abstained at attacked points of certified images, or a broken "
        "certificate).",
        "",
        "| " + " | ".join(head) + " |",
        sep,
    ]
    broken = []
    for run in runs:
        ub = run["attack_upper_bound"]
        cells = [
            f"{_pct(c)} to {_pct(u)} (gap {100 * g:.1f})"
            for c, u, g in zip(ub["certified_accuracy"], ub["robust_accuracy"], ub["gap"], strict=True)
        ]
        lines.append(f"| {NOISE_LABEL[run['noise']]} | {run['sigma']:g} | " + " | ".join(cells) + " |")
        for method, rec in run["attacks"].items():
            broken += [(run, method, b) for b in rec["broken_certificates"]]
    lines += ["", _broken_text(broken), ""]
    return "\n".join(lines)


def _broken_text(broken) -> str:
    if not broken:
        return (
            "**Certificates against attacks:** no attack succeeded on an image at a budget within its "
            "certified radius (a success there would contradict Theorem 1)."
        )
    listed = "; ".join(
        f"{run['noise']} sigma={run['sigma']:g} {method}: image {b['index']} at eps {b['eps']:.4g} "
        f"(exact W1 {b['w1']:.4g}, certified radius {b['certified_radius']:.4g})"
        for run, method, b in broken
    )
    return (
        f"**Certificates against attacks: {len(broken)} broken** (each a counterexample to check): {listed}."
    )


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def plot_robustness(
    config: Any,
    runs: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    indices: Sequence[int],
    mass: float,
) -> None:
    """``robustness.png``: a panel per sigma, certified curves (solid) and each attack (dashed, markers).

    Colours tell the noises apart, markers and dash patterns the methods; the radius axis is
    logarithmic (the budgets span the certified radii and 20 times beyond), with pixel-mass units
    on top (``mass``: the mean image mass). The certified curves are of the attacked images only.
    """
    from wbench.plots import RobustnessPanel, plot_robustness_panels
    from wbench.reproduce import NOISE_LABEL

    eps = np.asarray(sorted(config.attack_eps))
    colour = {noise: f"C{k}" for k, noise in enumerate(config.noises)}
    panels, styles = [], {}
    for sigma in config.sigmas:
        certified, empirical = {}, {}
        for run in (r for r in runs if r["sigma"] == sigma):
            name = NOISE_LABEL[run["noise"]]
            pred, correct, radius = row_arrays(read_certify_rows(run["certify_dir"], indices))
            top = max(float(radius.max()), float(eps[-1]))
            grid = np.geomspace(eps[0] / 2, 1.05 * top, 300)
            label = f"{name}: certified"
            certified[label] = (grid, certified_accuracy(radius, correct, pred, grid))
            styles[label] = {"color": colour[run["noise"]]}
            for method, rec in run["attacks"].items():
                label = f"{name}: {method} attack"
                empirical[label] = (
                    [p["eps"] for p in rec["per_eps"]],
                    [p["robust_accuracy"] for p in rec["per_eps"]],
                )
                styles[label] = {"color": colour[run["noise"]], **METHOD_STYLES[method]}
        panels.append(RobustnessPanel(f"sigma = {sigma:g}", certified, empirical))
    plot_robustness_panels(
        panels, path, styles=styles, mean_mass=mass, log_x=True,
        title=f"{config.dataset}: certified (lower bound, solid) vs attacks on the smoothed classifiers "
        f"(upper bound, dashed), {len(indices)} images",
        xlabel=f"W1 radius ({config.ground} ground), normalised mass",
    )  # fmt: skip
