"""`wbench reproduce --attack`: flags, the empirical tables, JSON and figure, resume, and soundness."""

from __future__ import annotations

import json

import pytest

from wbench.cli import main
from wbench.dataset_certification import CertifySettings, max_radius, read_certify_rows
from wbench.reproduce import ReproduceConfig
from wbench.reproduce_attack import TABLE_TITLE, broken_certificates, default_attack_eps, upper_bound
from wbench.runio import read_csv_rows

PNG = b"\x89PNG\r\n\x1a\n"
EPS = (0.005, 0.02, 0.08, 0.3)
# 2 epochs, 8 images certified with n = 64, 6 of them attacked by 4 steps of 8 noise draws each
TINY = [
    "--sigmas", "0.02", "--noises", "wasserstein", "--epochs", "2", "--max-images", "8", "--n0", "16",
    "--num-samples", "64", "--device", "cpu", "--no-progress", "--attack", "flow,frank_wolfe",
    "--attack-eps", ",".join(map(str, EPS)), "--attack-images", "6", "--attack-steps", "4",
    "--attack-noise-samples", "8",
]  # fmt: skip


def strict_load(path):
    return json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce_attack")
    assert main(["reproduce", "--out", str(out), *TINY]) == 0
    return out


def attack_dir(out, method):
    return out / "attack" / "wasserstein_sigma0.02" / method


# flags and validation -------------------------------------------------------------------


def test_no_attack_by_default_and_the_defaults_when_asked():
    plain = ReproduceConfig().resolved()
    assert plain.attack == () and plain.attack_eps is None and plain.attack_images is None
    cfg = ReproduceConfig(attack=("flow", "frank_wolfe", "flow")).resolved()
    assert cfg.attack == ("flow", "frank_wolfe")
    assert (cfg.attack_n, cfg.attack_alpha) == (cfg.n, cfg.alpha) == (1000, 0.05)
    assert (cfg.attack_images, cfg.attack_noise_samples, cfg.attack_steps) == (10, 16, 20)
    caps = [
        max_radius(CertifySettings(sigma=s, noise=z, n0=cfg.n0, n=cfg.n, alpha=cfg.alpha, ground=cfg.ground))
        for z in cfg.noises
        for s in cfg.sigmas
    ]
    eps = cfg.attack_eps
    assert list(eps) == sorted(set(eps)) and len(eps) == 7
    # from below every certifiable radius to 20x the largest (2 significant digits)
    assert eps[0] <= min(caps) / 4 * 1.05 and eps[-1] >= 20 * max(caps) * 0.95
    assert eps == default_attack_eps(caps)
    assert ReproduceConfig(max_images=5, attack=("flow",)).resolved().attack_images == 5
    gpu = ReproduceConfig(dataset="mnist", attack=("flow",)).resolved()  # the authors' counts, presets
    assert (gpu.attack_images, gpu.attack_noise_samples, gpu.attack_steps) == (100, 128, None)
    assert (gpu.attack_n, gpu.attack_alpha) == (10000, 0.05)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"attack": ("pgd",)}, "unknown attack method 'pgd'"),
        ({"attack_eps": (0.1,)}, "--attack-eps needs --attack"),
        ({"attack_images": 3, "attack_n": 10}, "--attack-images, --attack-num-samples need --attack"),
        ({"attack": ("flow",), "attack_eps": ()}, "--attack-eps must list"),
        ({"attack": ("flow",), "attack_eps": (0.1, 0.0)}, "--attack-eps must list"),
        ({"attack": ("flow",), "attack_eps": (float("nan"),)}, "--attack-eps must list"),
        ({"attack": ("flow",), "attack_images": 0}, "--attack-images must be a positive integer"),
        ({"attack": ("flow",), "attack_images": 101}, "exceeds the 100 certified images"),
        ({"attack": ("flow",), "attack_noise_samples": 0}, "--attack-noise-samples must be"),
        ({"attack": ("flow",), "attack_n": -1}, "--attack-num-samples must be"),
        ({"attack": ("flow",), "attack_steps": 0}, "--attack-steps must be"),
        ({"attack": ("flow",), "attack_alpha": 1.5}, r"--attack-alpha must be a number in \(0, 1\)"),
    ],
)
def test_config_refuses_bad_attack_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ReproduceConfig(**kwargs).resolved()


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--attack", "pgd"], "unknown attack method"),
        (["--attack", "flow", "--attack-eps", "0.1,abc"], "--attack-eps takes a number, got 'abc'"),
        (["--attack", "flow", "--attack-eps=-0.1"], "--attack-eps must list positive finite"),
        (["--attack", "flow", "--attack-images", "two"], "--attack-images takes an integer"),
        (["--attack", "flow", "--attack-images", "500"], "exceeds the"),
        (["--attack", "flow", "--attack-alpha", "0"], "--attack-alpha must be a number in (0, 1)"),
        (["--attack", "flow", "--attack-num-samples", "1.5"], "--attack-num-samples takes an integer"),
        (["--attack-steps", "5"], "--attack-steps needs --attack"),
    ],
)
def test_cli_refuses_bad_flags_in_one_line(tmp_path, capsys, extra, match):
    out = tmp_path / "o"
    assert main(["reproduce", "--out", str(out), "--sigmas", "0.02", "--no-progress", *extra]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()  # refused before anything was written


# the pieces, on rows built by hand --------------------------------------------------------


def _cert(index, correct, radius, prediction=1):
    return {
        "index": str(index),
        "correct": str(int(correct)),
        "radius": repr(radius),
        "prediction": str(prediction),
    }


def _atk(index, eps, prediction, label=1, w1=None):
    success = int(prediction not in (label, -1))
    return {"index": str(index), "eps": repr(eps), "prediction": str(prediction), "label": str(label),
            "success": str(success), "w1": repr(eps if w1 is None else w1)}  # fmt: skip


def test_a_success_inside_a_certified_radius_is_a_broken_certificate():
    cert = [_cert(0, True, 0.05), _cert(1, False, 0.0, prediction=2), _cert(2, True, 0.0, prediction=-1)]
    rows = [
        _atk(0, 0.04, 3, w1=0.039),  # inside the certified ball: broken
        _atk(0, 0.1, 3),  # beyond the radius: allowed
        _atk(1, 0.01, 2),  # misclassified image: no certificate
        _atk(2, 0.01, 3),  # abstained image: no certificate
        _atk(0, 0.02, -1),  # an abstention is not a success
    ]
    assert broken_certificates(rows, cert) == [
        {"index": 0, "eps": 0.04, "w1": 0.039, "certified_radius": 0.05}
    ]


def test_upper_bound_takes_every_method_and_every_smaller_budget():
    cert = [_cert(i, True, r) for i, r in enumerate((0.0, 0.01, 0.01, 0.05))]
    rows = {
        "flow": [_atk(0, 0.1, 2), _atk(0, 0.3, 1), _atk(1, 0.1, 1), _atk(1, 0.3, 1)],
        # image 1 falls to frank_wolfe at 0.3 only; image 2 abstains at 0.1; image 3 is never moved
        "frank_wolfe": [_atk(1, 0.3, 5), _atk(2, 0.1, -1), _atk(3, 0.1, 1), _atk(3, 0.3, 1)],
    }
    ub = upper_bound(rows, cert, [0.3, 0.1])
    # image 0 falls at 0.1 by flow; flow's own row at 0.3 does not bring it back
    assert ub["eps"] == [0.1, 0.3] and ub["robust_accuracy"] == [0.5, 0.25]
    assert ub["certified_accuracy"] == [0.0, 0.0] and ub["gap"] == [0.5, 0.25]
    # a row whose exact W1 lies outside its budget is no evidence
    assert upper_bound({"flow": [_atk(0, 0.1, 2, w1=0.2)]}, cert[:1], [0.1])["robust_accuracy"] == [1.0]


# a tiny real run ------------------------------------------------------------------------------


def test_tables_json_and_figures(tiny_run):
    out = tiny_run
    text = (out / "results.md").read_text()
    assert f"## {TABLE_TITLE}" in text and "### flow" in text and "### frank_wolfe" in text
    result = strict_load(out / "reproduce.json")
    assert result["config"]["attack_eps"] == list(EPS) and result["config"]["attack_n"] == 64
    assert result["files"]["robustness_plot"] == str(out / "robustness.png")
    (run,) = result["runs"]
    for method in ("flow", "frank_wolfe"):
        rec = run["attacks"][method]
        assert rec["images"] == 6 and [p["eps"] for p in rec["per_eps"]] == list(EPS)
        assert rec["settings"]["smoothing"] == "wasserstein" and rec["settings"]["sigma"] == 0.02
        assert (rec["settings"]["predict_n"], rec["settings"]["noise_samples"]) == (64, 8)
        cells = [f"{100 * p['robust_accuracy']:.1f} / {100 * c:.1f}"
                 for p, c in zip(rec["per_eps"], rec["certified_accuracy_at_eps"], strict=True)]  # fmt: skip
        table = text.split(f"### {method}")[1]
        assert f"| Wasserstein | 0.02 | {' | '.join(cells)} |" in table
        summary = strict_load(attack_dir(out, method) / "summary.json")
        assert summary["certified"]["certified_accuracy_at_eps"] == rec["certified_accuracy_at_eps"]
        assert (attack_dir(out, method) / "robust_accuracy.png").read_bytes()[:8] == PNG
    assert (out / "robustness.png").read_bytes()[:8] == PNG
    ub = run["attack_upper_bound"]
    assert ub["eps"] == list(EPS) and ub["images"] == 6
    # non-increasing by construction, and never above a single method's curve
    assert all(a >= b for a, b in zip(ub["robust_accuracy"][:-1], ub["robust_accuracy"][1:], strict=True))
    for method in ("flow", "frank_wolfe"):
        per = [p["robust_accuracy"] for p in run["attacks"][method]["per_eps"]]
        assert all(u <= p for u, p in zip(ub["robust_accuracy"], per, strict=True))


def test_no_attack_succeeds_where_a_certificate_holds(tiny_run):
    """A success at a budget within a correct image's certified radius contradicts Theorem 1."""
    cert = {int(r["index"]): r for r in read_certify_rows(tiny_run / "certify" / "wasserstein_sigma0.02")}
    result = strict_load(tiny_run / "reproduce.json")
    guarded = 0
    for method in ("flow", "frank_wolfe"):
        rows = read_csv_rows(attack_dir(tiny_run, method) / "attack.csv")
        assert len(rows) == 6 * len(EPS)
        for r in rows:
            c = cert[int(r["index"])]
            if int(c["correct"]) and float(c["radius"]) >= float(r["eps"]):
                guarded += 1
                assert not int(r["success"]), f"{method} broke the certificate of {c} with {r}"
        assert result["runs"][0]["attacks"][method]["broken_certificates"] == []
    assert guarded > 0  # the check is not vacuous: some attacks ran inside certified balls


def test_rerun_resumes_without_attacking_again(tiny_run):
    csvs = {m: (attack_dir(tiny_run, m) / "attack.csv").read_bytes() for m in ("flow", "frank_wolfe")}
    before = strict_load(tiny_run / "reproduce.json")
    assert main(["reproduce", "--out", str(tiny_run), *TINY]) == 0
    assert {m: (attack_dir(tiny_run, m) / "attack.csv").read_bytes() for m in csvs} == csvs
    after = strict_load(tiny_run / "reproduce.json")
    for method in csvs:
        keep = ("per_eps", "certified_accuracy_at_eps", "broken_certificates")
        a, b = before["runs"][0]["attacks"][method], after["runs"][0]["attacks"][method]
        assert {k: a[k] for k in keep} == {k: b[k] for k in keep}
    assert after["runs"][0]["attack_upper_bound"] == before["runs"][0]["attack_upper_bound"]


def test_other_attack_settings_in_the_same_folder_are_refused(tiny_run, capsys):
    changed = [*TINY[: TINY.index("--attack-steps")], "--attack-steps", "5", "--attack-noise-samples", "8"]
    assert main(["reproduce", "--out", str(tiny_run), *changed]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_two_processes_attack_like_one(tiny_run, tmp_path):
    """Under torchrun the ranks share each attack's batches; the rows equal the single process's."""
    from tests.test_distributed import ATTACK_COLUMNS, torchrun

    ckpt = tiny_run / "train" / "wasserstein_sigma0.02" / "checkpoint.pt"
    two = tmp_path / "two"
    done = torchrun(["reproduce", "--out", two, *TINY, "--checkpoint", f"wasserstein:0.02={ckpt}"])
    assert done.returncode == 0, done.stderr[-3000:]
    for method in ("flow", "frank_wolfe"):
        rows = [read_csv_rows(attack_dir(d, method) / "attack.csv") for d in (tiny_run, two)]
        one_rows, two_rows = (sorted(tuple(r[k] for k in ATTACK_COLUMNS) for r in rs) for rs in rows)
        assert len(two_rows) == 6 * len(EPS) and two_rows == one_rows
        assert not (attack_dir(two, method) / "shards").exists()
    a, b = (strict_load(d / "reproduce.json")["runs"][0] for d in (tiny_run, two))
    assert a["attack_upper_bound"] == b["attack_upper_bound"]
    assert done.stdout.count(TABLE_TITLE) == 1  # rank 0 alone reports
