"""Training step time for each training mode of the two papers.

Modes: clean CE; CE on Wasserstein (flow) smoothing noise and on Laplace pixel noise (Levine & Feizi,
App. B: one fresh noise draw per image); CE + eta^2 ||grad_x loss||^2 in the Euclidean and in the
Wasserstein metric (Lin et al., App. D, Algorithm 1 for the Wasserstein norm, double backprop). One
step = forward, backward, SGD update on a fixed seeded batch.
"""

from __future__ import annotations

from bench import _common as common

_SHAPE = {"mnist_wong": (1, 28, 28), "cifar_resnet18": (3, 32, 32)}
_SIGMA = {"mnist_wong": common.TRAIN_SIGMA, "cifar_resnet18": 1e-4}


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
    timeout = 300
    number = 1
    repeat = (3, 10, 10.0)
    warmup_time = 0.0

    def setup(self, model, mode, batch, device):
        import torch

        from wbench.models import build_model

        self.device = common.require_device(device)
        if model == "cifar_resnet18" and self.device.type == "cpu" and batch > 8:
            raise NotImplementedError("ResNet-18 training steps on the CPU only at batch 8")
        c, h, w = _SHAPE[model]
        torch.manual_seed(0)
        net = build_model(model).to(self.device)
        self.x = common.images(batch, c, h, w, device=self.device)
        self.y = common.labels(batch, device=self.device)
        self.step = common.make_train_step(net, mode, device=self.device, sigma=_SIGMA[model])
        self.step(self.x, self.y)  # warm-up: optimiser state, autograd graph caches

    def time_train_step(self, model, mode, batch, device):
        self.step(self.x, self.y)


class TrainStepTinyResNetSuite:
    """ResNet-18 (CIFAR variant) training step at batch 8 on every device: always in the reduced set."""

    params = (["clean", "flow_noise", "wasserstein_penalty"], list(common.DEVICES))
    param_names = ("mode", "device")
    batch = 8
    timeout = 300
    number = 1
    repeat = (3, 10, 10.0)
    warmup_time = 0.0

    def setup(self, mode, device):
        import torch

        from wbench.models import build_model

        self.device = common.require_device(device)
        torch.manual_seed(0)
        net = build_model("cifar_resnet18").to(self.device)
        self.x = common.mnist_like(self.batch, 3, 32, 32, density=1.0, device=self.device)
        self.y = common.labels(self.batch, device=self.device)
        self.step = common.make_train_step(net, mode, device=self.device, sigma=_SIGMA["cifar_resnet18"])
        self.step(self.x, self.y)

    def time_train_step(self, mode, device):
        self.step(self.x, self.y)
