"""Attacks against certificates: soundness, power, Lemma 1 for the flow attack, and a planted overshoot.

- **Soundness** (Theorem 1 tested by real adversaries): for digits certified by Wasserstein smoothing,
  every method attacks the smoothed classifier at ``eps`` equal to the image's certified radius; a
  success is re-checked by PREDICT at a large ``n`` and a small ``alpha`` and a confirmed flip fails
  the test, printing the image, ``eps`` and the exact W1.
- **Power**: on the same architecture trained without noise (undefended), each method flips most
  correctly classified digits at ``POWER_EPS`` (documented below), so the soundness check is not vacuous.
- **Lemma 1**: the flow attack's output has exact W1 at most ``||delta||_1 <= eps``, by every solver.
- **Planted overshoot**: an attack that quietly uses a larger budget is caught by the audit used
  by the soundness test (W1 beyond eps), and at 20x the certified radius it finds flips that the
  soundness check reports: the verification can fail.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wbench import WassersteinSmoothing, apply_flow, attack, load_dataset, w1
from wbench.attacks.core import W1_RTOL, AttackResult
from wbench.models import load_model
from wbench.training import TrainConfig, train

SIGMA = 0.02
N0, N_CERT, ALPHA_CERT = 100, 2000, 0.05
N_CONFIRM, ALPHA_CONFIRM = 20_000, 0.001
POWER_EPS = 0.2  # W1 (L1 ground, normalised mass): about 4 pixel-mass units on an 8x8 digit of mass ~20
POWER_RATE = 0.75  # measured: 12/12 (flow, frank_wolfe) and 11/12 (sinkhorn) flipped at this eps
FAST = {
    "flow": {"steps": 60},
    "frank_wolfe": {"steps": 40},
    "sinkhorn": {"steps": 40, "sinkhorn_iters": 60, "p": 1.0},
}
SMOOTHED = {  # fewer iterations against the smoothed classifier (each costs noise_samples passes)
    "flow": {"steps": 30},
    "frank_wolfe": {"steps": 20},
    "sinkhorn": {"steps": 15, "sinkhorn_iters": 30, "p": 1.0},
}
METHODS = tuple(FAST)


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    """A digits CNN trained on Wasserstein-noised images (sigma 0.02), 8 epochs on the CPU."""
    out = tmp_path_factory.mktemp("attack_model")
    cfg = TrainConfig.from_preset(
        "digits_quick", out_dir=str(out), device="cpu", seed=0, epochs=8, milestones=(6,),
        noise="wasserstein", sigma=SIGMA,
    )  # fmt: skip
    train(cfg, progress=False)
    model, _ = load_model(str(out / "checkpoint.pt"), "cpu")
    return model


@pytest.fixture(scope="module")
def clean_model(tmp_path_factory):
    """The same CNN trained without noise (the undefended network of the power check), 6 epochs."""
    out = tmp_path_factory.mktemp("clean_model")
    cfg = TrainConfig.from_preset(
        "digits_quick", out_dir=str(out), device="cpu", seed=0, epochs=6, milestones=(5,)
    )
    train(cfg, progress=False)
    model, _ = load_model(str(out / "checkpoint.pt"), "cpu")
    return model


@pytest.fixture(scope="module")
def digits():
    ds = load_dataset("digits", "test")
    x = torch.stack([ds[i][0] for i in range(24)])
    y = torch.tensor([ds[i][1] for i in range(24)], dtype=torch.int64)
    return x, y


def audit(
    images: torch.Tensor, labels: torch.Tensor, eps: float, res: AttackResult, ground: str = "l1"
) -> None:
    """Check an AttackResult independently: mass, sign, exact W1 (POT's dense solver), and the budget."""
    assert res.adversarial.shape == images.shape
    assert bool((res.adversarial >= 0).all()), "negative adversarial pixel"
    m_x = images.double().sum(dim=(2, 3))
    m_a = res.adversarial.double().sum(dim=(2, 3))
    assert bool(((m_x - m_a).abs() <= 1e-5 * m_x).all()), "channel mass changed"
    mass = images.double().flatten(1).sum(1).view(-1, 1, 1, 1)
    for i in range(images.shape[0]):
        ref = w1(
            (images[i] / mass[i]).float(), (res.adversarial[i] / mass[i]).float(), ground=ground, solver="pot"
        )
        assert abs(ref - res.w1[i]) <= 1e-6 * max(ref, 1e-12) + 1e-12, (
            f"image {i}: reported W1 {res.w1[i]} vs {ref}"
        )
        if res.success[i]:
            assert ref <= eps * (1 + W1_RTOL), f"image {i}: success at exact W1 {ref:.6g} > eps {eps:.6g}"


@pytest.fixture(scope="module")
def certified(digits_model, digits):
    """The smoothed classifier and (index, radius) of its correctly certified test digits, radius > 0."""
    x, y = digits
    smooth = WassersteinSmoothing(digits_model, 10, SIGMA, device="cpu", seed=0)
    out = []
    for i in range(8):
        pred, _, radius = smooth.certify(x[i], N0, N_CERT, ALPHA_CERT, index=i)
        if pred == int(y[i]) and radius > 0:
            out.append((i, radius))
    return smooth, out


def confirmed_flips(model, x, y, certified, attack_fn) -> list[str]:
    """Run ``attack_fn(image, label, eps, index)`` at each certified radius; PREDICT-confirm every success."""
    confirm = WassersteinSmoothing(model, 10, SIGMA, device="cpu", seed=12345)  # fresh noise
    found = []
    for i, radius in certified:
        res = attack_fn(x[i : i + 1], y[i : i + 1], radius, i)
        if not res.success[0]:
            continue
        pred = confirm.predict(res.adversarial[0], N_CONFIRM, ALPHA_CONFIRM, index=i)
        if pred not in (-1, int(y[i])):
            found.append(
                f"image {i}: eps {radius:.6g}, exact W1 {res.w1[0]:.6g}, label {int(y[i])} -> {pred}"
            )
    return found


@pytest.mark.parametrize("method", METHODS)
def test_no_attack_breaks_a_certificate(claims, digits_model, digits, certified, method):
    x, y = digits
    smooth, certified = certified
    assert len(certified) >= 4, "too few certified digits for a meaningful check"

    def run(xi, yi, eps, i):
        res = attack(
            digits_model, xi, yi, eps, method, smoothing=smooth, seed=0, noise_samples=16, predict_n=N_CERT,
            predict_alpha=ALPHA_CERT, indices=[i], **SMOOTHED[method],
        )  # fmt: skip
        audit(xi, yi, eps, res)
        return res

    flips = confirmed_flips(digits_model, x, y, certified, run)
    claims.true(
        "Theorem 1: no attack flips a certified digit within its radius",
        not flips,
        case=method,
        detail="certificate broken:\n" + "\n".join(flips),
    )


@pytest.mark.parametrize("method", METHODS)
def test_attacks_flip_most_digits_of_the_undefended_network(claims, clean_model, digits, method):
    x, y = digits
    with torch.no_grad():
        correct = clean_model(x).argmax(1) == y
    xs, ys = x[correct][:12], y[correct][:12]
    res = attack(clean_model, xs, ys, POWER_EPS, method, **FAST[method])
    audit(xs, ys, POWER_EPS, res)
    rate = float(res.success.mean())
    claims.leq(
        f"attack power: {method} flips >= {POWER_RATE:.0%} at W1 {POWER_EPS}", POWER_RATE, rate, atol=0.0
    )
    assert rate >= POWER_RATE, f"{method} flipped {rate:.0%} of {len(ys)} digits at eps {POWER_EPS}"


@pytest.mark.parametrize("ground", ["l1", "l2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_flow_attack_stays_in_the_exact_ball_by_lemma1(claims, digits_model, digits, ground, dtype):
    x, y = digits
    model = digits_model.to(dtype)
    try:
        xs, ys = x[:6].to(dtype), y[:6]
        eps = 0.08
        res = attack(model, xs, ys, eps, "flow", ground=ground, steps=25)
    finally:
        digits_model.float()
    mass = xs.flatten(1).sum(1).view(-1, 1, 1, 1)
    norms = res.plan.l1_norm(keep_dims=1)
    assert bool((norms <= eps).all()), f"flow plan norms {norms.tolist()} exceed eps {eps}"
    rebuilt = apply_flow(xs / mass, res.plan) * mass
    torch.testing.assert_close(rebuilt, res.adversarial, rtol=0, atol=8 * torch.finfo(dtype).eps)
    solvers = ("pot", "lp", "network") if ground == "l1" else ("pot",)
    for i in range(xs.shape[0]):
        a, b = xs[i] / mass[i], res.adversarial[i] / mass[i]
        for solver in solvers:
            d = w1(a, b, ground=ground, solver=solver)
            claims.leq(
                "Lemma 1: W1(x, Delta(x, delta)) <= ||delta||_1 <= eps (flow attack)",
                d, float(norms[i]), atol=1e-6 * float(norms[i]) + 1e-12,
                case=f"{ground} {solver} {dtype} #{i}",
            )  # fmt: skip
            assert d <= eps * (1 + W1_RTOL)


def test_a_planted_overshoot_is_caught(digits_model, digits, certified):
    """An attack that uses 20x its budget: the audit rejects its successes and soundness reports flips."""
    x, y = digits
    smooth, certified = certified
    certified = certified[:4]

    def overshoot(xi, yi, eps, i):
        res = attack(digits_model, xi, yi, 20 * eps, "flow", smoothing=smooth, seed=0, noise_samples=16,
                     predict_n=N_CERT, predict_alpha=ALPHA_CERT, indices=[i], steps=20)  # fmt: skip
        return res

    flips = confirmed_flips(digits_model, x, y, certified, overshoot)
    assert flips, "the soundness check found nothing even at 20x the certified radius"
    i, radius = certified[0]
    res = overshoot(x[i : i + 1], y[i : i + 1], radius, i)
    if res.w1[0] > radius * (1 + W1_RTOL):
        res = AttackResult(res.adversarial, res.w1, np.array([True]), res.prediction, res.abstain, res.shrunk)
        with pytest.raises(AssertionError, match="success at exact W1"):
            audit(x[i : i + 1], y[i : i + 1], radius, res)
