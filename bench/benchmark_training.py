"""Training step time for each training mode of the two papers.

Modes: clean CE; CE on Wasserstein (flow) smoothing noise and on Laplace pixel noise (Levine & Feizi,
App. B: one fresh noise draw per image); CE + eta^2 ||grad_x loss||^2 in the Euclidean and in the
Wasserstein metric (Lin et al., App. D, Algorithm 1 for the Wasserstein norm, double backprop). One
step = forward, backward, SGD update on a fixed seeded batch.
"""

from __future__ import annotations

import wbench.models  # noqa: F401  (preimported for asv's forkserver, see bench/_common.py)
import wbench.training  # noqa: F401  (preimported for asv's forkserver, see bench/_common.py)
from bench import _common as common

_SHAPE = {"mnist_wong": (1, 28, 28), "cifar_resnet18": (3, 32, 32)}
_SIGMA = {"mnist_wong": common.TRAIN_SIGMA, "cifar_resnet18": 1e-4}


def _warm_step(model: str, mode: str, batch: int, device) -> dict:
    """A seeded model, batch and training step, after two warm-up steps.

    The warm-up creates the optimiser's momentum buffers and pays the first-call costs (oneDNN
    primitives, allocator growth, autograd graph caches): a cold ResNet-18 clean step was timed at
    3 s next to 0.8 s for a warm noisy one.
    """
    import torch

    from wbench.models import build_model

    c, h, w = _SHAPE[model]
    torch.manual_seed(0)
    net = build_model(model).to(device)
    x = common.images(batch, c, h, w, device=device)
    y = common.labels(batch, device=device)
    step = common.make_train_step(net, mode, device=device, sigma=_SIGMA[model])
    for _ in range(2):
        step(x, y)
    return dict(x=x, y=y, step=step)


class TrainStepSuite:
    """Seconds per SGD step by model, training mode, batch and device.

    ResNet-18 is in the full parameter set; on the CPU it runs only at the tiny batch (8) so a full
    run stays bounded, and its larger batches are GPU cases.
    """

    params = (
        common.grid(["mnist_wong"], ["mnist_wong", "cifar_resnet18"]),
        list(common.TRAIN_MODES),
        common.grid([128], [8, 128]),
        list(common.DEVICES),
    )
    param_names = ("model", "mode", "batch", "device")
    # One process per case; 3-15 steps timed one by one, sampling stops after 3 s.
    rounds = 1
    number = 1
    repeat = (3, 15, 3.0)
    min_run_count = 3
    warmup_time = 0.0  # the warm-up is in setup
    timeout = 120

    def setup(self, model, mode, batch, device):
        self.device = common.require_device(device)
        if model == "cifar_resnet18" and self.device.type == "cpu" and batch > 8:
            raise NotImplementedError("ResNet-18 training steps on the CPU only at batch 8")
        key = (type(self).__name__, model, mode, batch, device)
        vars(self).update(common.per_process(key, lambda: _warm_step(model, mode, batch, self.device)))

    def time_train_step(self, model, mode, batch, device):
        self.step(self.x, self.y)


class TrainStepTinyResNetSuite:
    """ResNet-18 (CIFAR variant) training step at batch 8 on every device, also in the reduced set."""

    params = (
        common.grid(["clean", "flow_noise"], ["clean", "flow_noise", "wasserstein_penalty"]),
        list(common.DEVICES),
    )
    param_names = ("mode", "device")
    batch = 8
    # One process per case; 3-5 steps timed one by one (about a second each on 2 cores), sampling
    # stops after 4 s. The double-backprop Wasserstein-penalty step (about 3x a clean step) is in the
    # full set only.
    rounds = 1
    number = 1
    repeat = (3, 5, 4.0)
    min_run_count = 3
    warmup_time = 0.0  # the warm-up is in setup
    timeout = 180

    def setup(self, mode, device):
        self.device = common.require_device(device)
        key = (type(self).__name__, mode, self.batch, device)
        vars(self).update(
            common.per_process(key, lambda: _warm_step("cifar_resnet18", mode, self.batch, self.device))
        )

    def time_train_step(self, mode, device):
        self.step(self.x, self.y)
