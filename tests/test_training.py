"""Training: config validation, presets, the step for each mode, checkpoints, exact resume."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from wbench.models import build_model, load_model
from wbench.noise import image_mass
from wbench.options import Noise, PenaltyMetric, TrainingNoise, TrainingPenalty
from wbench.penalties import gradient_penalty_loss
from wbench.training import PRESETS, TrainConfig, random_crop_flip, train, train_step

TINY = {
    "dataset": "digits",
    "epochs": 2,
    "batch_size": 32,
    "lr": 0.05,
    "limit_train": 96,
    "limit_test": 40,
    "device": "cpu",
    "milestones": (1,),
    "seed": 3,
}


def tiny(tmp_path, name="run", **kw) -> TrainConfig:
    return TrainConfig.from_dict({**TINY, "out_dir": str(tmp_path / name), **kw})


# ---------------------------------------------------------------- config


def test_presets_follow_the_papers():
    mnist, cifar, lin = PRESETS["levine_mnist"], PRESETS["levine_cifar"], PRESETS["lin_cifar"]
    # Levine & Feizi, Table 3
    assert (mnist["epochs"], mnist["batch_size"], mnist["lr"], mnist["momentum"], mnist["weight_decay"]) == (
        200,
        128,
        0.001,
        0.9,
        5e-4,
    )
    # Table 4: lr 0.01 for epochs 1-200, then 0.001; crop + flip
    assert (cifar["lr"], cifar["milestones"], cifar["gamma"], cifar["augment"]) == (0.01, (200,), 0.1, True)
    assert (cifar["momentum"], cifar["weight_decay"], cifar["batch_size"]) == (0.9, 5e-4, 128)
    # Lin et al., Appendix D
    assert (lin["lr"], lin["milestones"], lin["gamma"], lin["epochs"]) == (0.1, (100, 150), 0.1, 200)
    assert (lin["momentum"], lin["weight_decay"], lin["batch_size"], lin["model"]) == (
        0.9,
        1e-4,
        128,
        "resnet20_softplus",
    )
    for name in PRESETS:
        extra = {}
        if PRESETS[name].get("noise", "none") != "none":
            extra["sigma"] = 0.01
        if PRESETS[name].get("penalty", "none") != "none":
            extra["eta"] = 0.1
        cfg = TrainConfig.from_preset(name, **extra)
        assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_config_dict_roundtrip_is_plain():
    cfg = TrainConfig(milestones=(3, 5), noise="laplace", sigma=0.02)
    d = cfg.to_dict()
    assert d["milestones"] == [3, 5] and isinstance(d["milestones"], list)
    json.dumps(d)
    assert TrainConfig.from_dict(d) == cfg
    assert cfg.model_name == "digits_cnn"


def test_config_parses_options_once_and_stores_plain_strings():
    cfg = TrainConfig(noise="Laplace", sigma=0.02)
    assert cfg.noise is TrainingNoise.LAPLACE and cfg.penalty is TrainingPenalty.NONE
    d = cfg.to_dict()
    # checkpoints are loaded with weights_only=True: no Enum may reach the stored dict
    assert type(d["noise"]) is str and type(d["penalty"]) is str
    assert (d["noise"], d["penalty"]) == ("laplace", "none")
    # the dict an earlier version stored (plain strings) still loads
    old = {**d, "noise": "none", "sigma": None, "penalty": "wasserstein", "eta": 0.1}
    assert TrainConfig.from_dict(old).penalty is TrainingPenalty.WASSERSTEIN


def test_training_options_add_none_to_the_core_choices():
    assert [m.value for m in TrainingNoise] == ["none", *(m.value for m in Noise)]
    assert [m.value for m in TrainingPenalty] == ["none", *(m.value for m in PenaltyMetric)]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dataset": "svhn"}, "unknown dataset"),
        ({"model": "vgg"}, "unknown model"),
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"epochs": 2.5}, "epochs must be an integer"),
        ({"batch_size": True}, "batch_size must be an integer"),
        ({"lr": 0.0}, "lr must be positive"),
        ({"lr": float("nan")}, "lr must be finite"),
        ({"momentum": 1.0}, "momentum must be in"),
        ({"weight_decay": -1e-4}, "weight_decay must be >= 0"),
        ({"milestones": (5, 3)}, "strictly increasing"),
        ({"milestones": (0,)}, "milestone must be >= 1"),
        ({"gamma": -0.1}, "gamma must be positive"),
        ({"noise": "gaussian"}, "unknown noise 'gaussian'"),
        ({"noise": "wasserstein"}, "needs sigma"),
        ({"noise": "wasserstein", "sigma": -0.1}, "sigma must be positive"),
        ({"noise": "laplace", "sigma": float("inf")}, "sigma must be finite"),
        ({"sigma": 0.1}, "noise is 'none'"),
        ({"shared_noise": True}, "shared_noise needs noise"),
        ({"shared_noise": 1, "noise": "laplace", "sigma": 0.1}, "shared_noise must be True or False"),
        ({"penalty": "l2"}, "unknown penalty 'l2'"),
        ({"penalty": "euclidean"}, "needs eta"),
        ({"penalty": "wasserstein", "eta": 0.0}, "eta must be positive"),
        ({"eta": 0.1}, "penalty is 'none'"),
        ({"radius": 0.5}, "radius must be >= 1"),
        ({"noise": "laplace", "sigma": 0.1, "penalty": "euclidean", "eta": 0.1}, "not both"),
        ({"device": "tpu"}, "unknown device 'tpu'"),
        ({"num_workers": -1}, "num_workers must be >= 0"),
        ({"seed": -1}, "seed must be >= 0"),
        ({"augment": "yes"}, "augment must be True or False"),
        ({"limit_train": 0}, "limit_train must be >= 1"),
        ({"out_dir": ""}, "out_dir"),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**overrides)


def test_from_dict_and_preset_errors():
    with pytest.raises(ValueError, match=r"unknown TrainConfig fields \['lrate'\]"):
        TrainConfig.from_dict({"lrate": 0.1})
    with pytest.raises(ValueError, match="unknown preset 'fast'"):
        TrainConfig.from_preset("fast")


# ---------------------------------------------------------------- one step


class _Recorder(torch.nn.Module):
    """A linear classifier that remembers the images it was given."""

    def __init__(self, shape):
        super().__init__()
        self.fc = torch.nn.Linear(int(torch.tensor(shape).prod()), 10)
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.fc(x.flatten(1))


def _step(noise, shared=False, seed=0, shape=(2, 5, 6)):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(4, *shape, generator=gen, dtype=torch.float64).float()
    y = torch.tensor([0, 1, 2, 3])
    model = _Recorder(shape)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss, correct = train_step(
        model,
        opt,
        x,
        y,
        noise=noise,
        sigma=0.05,
        shared_noise=shared,
        seed=seed,
        step=0,
        check_input=True,
    )
    return x, model.seen[0], loss, correct


def test_step_wasserstein_noise_moves_mass_within_channels():
    x, seen, loss, correct = _step("wasserstein")
    assert not torch.allclose(seen, x, atol=1e-3)
    # flow noise conserves each channel's mass of each image (Corollary 2)
    torch.testing.assert_close(seen.sum(dim=(2, 3)), x.sum(dim=(2, 3)), rtol=1e-5, atol=1e-5)
    assert loss.ndim == 0 and bool(torch.isfinite(loss)) and 0 <= int(correct) <= 4


def test_step_noise_is_fresh_per_image_unless_shared():
    for noise in ("wasserstein", "laplace"):
        x, seen, _, _ = _step(noise)
        m = image_mass(x)
        delta = seen / m - x / m  # the draw in normalised mass
        assert not torch.allclose(delta[0], delta[1], atol=1e-4)
        x, seen, _, _ = _step(noise, shared=True)
        delta = seen / m - x / m
        for k in range(1, 4):
            torch.testing.assert_close(delta[k], delta[0], rtol=1e-4, atol=1e-5)


def test_step_laplace_noise_changes_mass_and_clean_step_sees_input():
    x, seen, _, _ = _step("laplace")
    assert not torch.allclose(seen.sum(dim=(1, 2, 3)), x.sum(dim=(1, 2, 3)), rtol=1e-3)
    x, seen, _, _ = _step("none")
    assert torch.equal(seen, x)


def test_step_clean_loss_is_cross_entropy_before_update():
    torch.manual_seed(0)
    model = build_model("digits_cnn")
    x, y = torch.rand(8, 1, 8, 8), torch.arange(8) % 10
    with torch.no_grad():
        expected = F.cross_entropy(model(x), y)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    loss, _ = train_step(model, opt, x, y)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize(
    ("option", "message"),
    [({"noise": "gaussian"}, "unknown noise 'gaussian'"), ({"penalty": "l2"}, "unknown penalty 'l2'")],
)
def test_step_rejects_unknown_options(option, message):
    model = _Recorder((1, 4, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=message):
        train_step(model, opt, torch.rand(2, 1, 4, 4), torch.tensor([0, 1]), sigma=0.1, eta=0.1, **option)


def test_step_rejects_negative_images_when_checking():
    model = _Recorder((1, 4, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.rand(2, 1, 4, 4)
    x[0, 0, 0, 0] = -0.5
    with pytest.raises(ValueError, match="negative"):
        train_step(model, opt, x, torch.tensor([0, 1]), noise="wasserstein", sigma=0.1, check_input=True)


@pytest.mark.parametrize("metric", ["euclidean", "wasserstein"])
def test_step_penalty_matches_gradient_penalty_loss(metric):
    torch.manual_seed(0)
    model = build_model("digits_cnn")
    x, y = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.arange(6)
    total, data_loss, pen = gradient_penalty_loss(model, x, y, 0.5, metric=metric, radius=2)
    assert float(pen.detach()) > 0 and float(total.detach()) > float(data_loss.detach())
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss, correct = train_step(model, opt, x, y, penalty=metric, eta=0.5, radius=2)
    torch.testing.assert_close(loss, total.detach(), rtol=1e-5, atol=1e-6)
    assert 0 <= int(correct) <= 6


# ---------------------------------------------------------------- augmentation


def test_random_crop_flip_is_a_crop_of_the_padded_image():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(16, 2, 6, 7, generator=gen) + 0.1
    out = random_crop_flip(x, torch.Generator().manual_seed(1), padding=2)
    assert out.shape == x.shape
    padded = F.pad(x, (2, 2, 2, 2))
    flips = []
    for b in range(x.shape[0]):
        matches = [
            flip
            for dy in range(5)
            for dx in range(5)
            for flip in (False, True)
            if torch.equal(out[b], (padded[b].flip(-1) if flip else padded[b])[:, dy : dy + 6, dx : dx + 7])
        ]
        assert matches, f"image {b} is not a (flipped) crop"
        flips.append(matches[0])
    assert any(flips) and not all(flips)
    again = random_crop_flip(x, torch.Generator().manual_seed(1), padding=2)
    assert torch.equal(out, again)


# ---------------------------------------------------------------- full runs


def test_train_writes_weights_only_checkpoint_and_metrics(tmp_path):
    cfg = tiny(tmp_path, noise="wasserstein", sigma=0.01)
    summary = train(cfg, progress=False)
    assert summary["epochs"] == 2 and 0.0 <= summary["test_accuracy"] <= 1.0
    assert summary["test_accuracy_noisy"] is not None and summary["seconds"] > 0
    ckpt = torch.load(summary["checkpoint"], weights_only=True)
    expected_keys = {
        "model_name",
        "model_kwargs",
        "state_dict",
        "optimizer",
        "scheduler",
        "epoch",
        "config",
        "seed",
        "environment",
        "metrics",
        "rng",
    }
    assert expected_keys <= set(ckpt)
    assert ckpt["epoch"] == 2 and ckpt["seed"] == 3 and ckpt["config"] == cfg.to_dict()
    assert [m["epoch"] for m in ckpt["metrics"]] == [1, 2]
    assert {"train_loss", "train_acc", "test_acc", "seconds", "lr"} <= set(ckpt["metrics"][0])
    # MultiStepLR at milestone 1: lr 0.05 for epoch 1, 0.005 for epoch 2
    assert [m["lr"] for m in ckpt["metrics"]] == pytest.approx([0.05, 0.005], rel=1e-12)
    assert ckpt["rng"]["augment"].dtype == torch.uint8 and ckpt["rng"]["cpu"].dtype == torch.uint8
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert on_disk["metrics"] == ckpt["metrics"] and on_disk["epochs_completed"] == 2
    model, _ = load_model(summary["checkpoint"], device="cpu")
    for key, value in model.state_dict().items():
        assert torch.equal(value, ckpt["state_dict"][key])


@pytest.mark.parametrize(
    "mode",
    [
        {"noise": "wasserstein", "sigma": 0.01, "augment": True},
        {"penalty": "wasserstein", "eta": 0.5, "radius": 2.0},
    ],
    ids=["flow-noise+augment", "wasserstein-penalty"],
)
def test_resume_after_interruption_is_exact(tmp_path, mode):
    straight = train(tiny(tmp_path, "straight", **mode), progress=False)
    first = train(tiny(tmp_path, "resumed", **{**mode, "epochs": 1}), progress=False)
    assert first["epochs"] == 1
    resumed = train(tiny(tmp_path, "resumed", **mode), resume=True, progress=False)
    a = torch.load(straight["checkpoint"], weights_only=True)
    b = torch.load(resumed["checkpoint"], weights_only=True)
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    for name in ("augment", "cpu"):  # training noise is keyed by the step: no state
        assert torch.equal(a["rng"][name], b["rng"][name])
    strip = [{k: v for k, v in m.items() if k != "seconds"} for m in a["metrics"]]
    assert strip == [{k: v for k, v in m.items() if k != "seconds"} for m in b["metrics"]]
    assert resumed["test_accuracy"] == straight["test_accuracy"]


def test_same_seed_same_weights_other_seed_differs(tmp_path):
    a = torch.load(train(tiny(tmp_path, "a", epochs=1), progress=False)["checkpoint"], weights_only=True)
    b = torch.load(train(tiny(tmp_path, "b", epochs=1), progress=False)["checkpoint"], weights_only=True)
    c = torch.load(
        train(tiny(tmp_path, "c", epochs=1, seed=4), progress=False)["checkpoint"], weights_only=True
    )
    key = next(iter(a["state_dict"]))
    assert torch.equal(a["state_dict"][key], b["state_dict"][key])
    assert not torch.equal(a["state_dict"][key], c["state_dict"][key])


def test_resume_guards(tmp_path):
    train(tiny(tmp_path, epochs=1), progress=False)
    with pytest.raises(ValueError, match="exists; pass resume=True"):
        train(tiny(tmp_path, epochs=1), progress=False)
    with pytest.raises(ValueError, match=r"config differs \(lr: checkpoint 0.05 vs now 0.1\)"):
        train(tiny(tmp_path, epochs=2, lr=0.1), resume=True, progress=False)
    # nothing left to do: the summary of the finished run comes back
    done = train(tiny(tmp_path, epochs=1), resume=True, progress=False)
    assert done["epochs"] == 1
    # resume without a checkpoint starts a fresh run
    fresh = train(tiny(tmp_path, "fresh", epochs=1), resume=True, progress=False)
    assert fresh["epochs"] == 1


def test_model_must_fit_dataset(tmp_path):
    with pytest.raises(ValueError, match="model 'mnist_wong' does not accept 'digits' images"):
        train(tiny(tmp_path, model="mnist_wong"), progress=False)


def test_cuda_request_without_cuda_is_a_value_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ValueError, match="CUDA is not available"):
        train(tiny(tmp_path, device="cuda"), progress=False)
