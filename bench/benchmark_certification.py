"""Monte Carlo throughput of randomized smoothing: noise samples per second vs plain forward passes.

Certifying one image with Cohen et al.'s CERTIFY costs n0 + n noisy forward passes (Levine & Feizi used
n0 = 1000, n = 10,000), so the smoothing overhead (noise draw + Delta + mass scaling, Eq. 33) relative
to the network's own forward pass is what decides certification time. ``time_`` entries give seconds
per sub-batch of ``batch`` samples (samples/s = batch / time); ``track_throughput_ratio`` measures
(smoothed samples/s) / (plain forward samples/s) by interleaving both in one process.
"""

from __future__ import annotations

import wbench.models  # noqa: F401  (preimported for asv's forkserver, see bench/_common.py)
import wbench.smoothing  # noqa: F401  (preimported for asv's forkserver, see bench/_common.py)
from bench import _common as common

_SIGMA = {"mnist_wong": 0.01, "resnet20_softplus": 1e-4, "cifar_resnet18": 1e-4}
_SHAPE = {"mnist_wong": (1, 28, 28), "resnet20_softplus": (3, 32, 32), "cifar_resnet18": (3, 32, 32)}
_MODELS = common.grid(["mnist_wong"], ["mnist_wong", "resnet20_softplus", "cifar_resnet18"])


class _SmoothingFixture:
    """Builds the model, one test image, its repeated batch and both smoothed classifiers."""

    def _build(self, model_name: str, batch: int, device: str, warm: str | None = None) -> None:
        """Set up (or reuse, see :func:`bench._common.per_process`) the fixture; ``warm``: the kind of
        call (``"forward"``, ``"wasserstein"``, ``"laplace"``) to run twice once it is built."""
        self.device = common.require_device(device)
        if model_name == "cifar_resnet18" and self.device.type == "cpu":
            raise NotImplementedError("ResNet-18 at certification batch sizes is a GPU benchmark")

        def build() -> dict:
            self._make(model_name, batch)
            for _ in range(2 if warm else 0):  # first-call allocations and kernel selection
                self._call(warm)
            return dict(vars(self))

        vars(self).update(common.per_process((type(self).__name__, model_name, batch, device, warm), build))

    def _make(self, model_name: str, batch: int) -> None:
        import torch

        from wbench.models import build_model
        from wbench.smoothing import LaplaceSmoothing, WassersteinSmoothing

        torch.manual_seed(0)
        self.model = build_model(model_name).to(self.device).eval()
        c, h, w = _SHAPE[model_name]
        self.x = common.images(1, c, h, w, device=self.device)[0]
        self.batch_x = self.x.unsqueeze(0).repeat(batch, 1, 1, 1)
        kwargs = dict(batch_size=batch, device=self.device, seed=0)
        sigma = _SIGMA[model_name]
        self.smoothers = {
            "wasserstein": WassersteinSmoothing(self.model, 10, sigma, **kwargs),
            "laplace": LaplaceSmoothing(self.model, 10, sigma, **kwargs),
        }
        self.batch = batch
        self._inference_mode = torch.inference_mode

    def _call(self, kind: str) -> None:
        if kind == "forward":
            self._forward()
        else:
            self._smoothed(kind)

    def _forward(self) -> None:
        with self._inference_mode():
            self.model(self.batch_x).argmax(1)
        common.sync(self.device)

    def _smoothed(self, noise: str) -> None:
        self.smoothers[noise].sample_counts(self.x, self.batch, index=0, batch_size=self.batch)
        common.sync(self.device)


class SamplingThroughputSuite(_SmoothingFixture):
    """Seconds per sub-batch: plain forward, Wasserstein-smoothed and Laplace-smoothed class counts."""

    params = (
        _MODELS,
        ["forward", "wasserstein", "laplace"],
        common.grid([1000], [100, 1000]),
        list(common.DEVICES),
    )
    param_names = ("model", "kind", "batch", "device")
    # One process per case; 5-15 samples of one sub-batch each, sampling stops after 3 s.
    rounds = 1
    number = 1
    repeat = (5, 15, 3.0)
    min_run_count = 5
    warmup_time = 0.0  # the warm-up is in setup
    timeout = 90

    def setup(self, model, kind, batch, device):
        self._build(model, batch, device, warm=kind)

    def time_batch(self, model, kind, batch, device):
        self._call(kind)


class SmoothingOverheadSuite(_SmoothingFixture):
    """(Smoothed samples/s) / (plain forward samples/s), interleaved in one process; 1.0 = free noise."""

    params = (_MODELS, ["wasserstein", "laplace"], common.grid([1000], [100, 1000]), list(common.DEVICES))
    param_names = ("model", "noise", "batch", "device")
    unit = "ratio"
    rounds_per_call = 7  # interleaved pairs per call; the median pair ratio is reported
    rounds = 1
    timeout = 120

    def setup(self, model, noise, batch, device):
        self._build(model, batch, device)

    def track_throughput_ratio(self, model, noise, batch, device):
        t_fwd, t_smooth = common.interleaved_times(
            self._forward, lambda: self._smoothed(noise), self.rounds_per_call, warmup=1
        )
        return common.median_pair_ratio(t_fwd, t_smooth)
