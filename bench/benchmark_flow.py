"""Throughput of flow-plan sampling, Delta(x, delta) and mass-space smoothing noise.

Levine & Feizi's Wasserstein smoothing draws one Laplace flow plan per noise sample (Eq. 33) and
applies it with Delta (Definition 3.1); the Laplace baseline draws one Laplace variable per pixel.
These are the per-sample costs that certification and noise training pay on top of the network.
"""

from __future__ import annotations

from bench import _common as common

_SHAPES = {"28x28x1": (1, 28, 28), "32x32x3": (3, 32, 32)}
_SIGMA = 0.01


class FlowSamplingSuite:
    """Drawing a Laplace flow plan per image (``sample_laplace_flow``) and applying it (``apply_flow``)."""

    params = (common.grid([100, 1000], [1, 100, 1000, 10000]), list(_SHAPES), list(common.DEVICES))
    param_names = ("batch", "shape", "device")
    timeout = 120
    number = 1
    repeat = (3, 20, 5.0)
    warmup_time = 0.05

    def setup(self, batch, shape, device):
        from wbench.flow import apply_flow
        from wbench.noise import sample_laplace_flow

        self.device = common.require_device(device)
        c, h, w = _SHAPES[shape]
        self.image_shape = (batch, c, h, w)
        self.x = common.images(batch, c, h, w, device=self.device)
        self.plan = sample_laplace_flow(self.image_shape, _SIGMA, seed=0, device=self.device)
        self._sample, self._apply = sample_laplace_flow, apply_flow
        common.sync(self.device)

    def time_sample_laplace_flow(self, batch, shape, device):
        self._sample(self.image_shape, _SIGMA, seed=0, device=self.device)
        common.sync(self.device)

    def time_apply_flow(self, batch, shape, device):
        self._apply(self.x, self.plan)
        common.sync(self.device)


class SmoothingNoiseSuite:
    """One mass-space noise draw per image (``wbench.noise.perturb``): flow (Wasserstein) vs pixel Laplace."""

    params = (
        common.grid([1000], [100, 1000, 10000]),
        list(_SHAPES),
        ["wasserstein", "laplace"],
        list(common.DEVICES),
    )
    param_names = ("batch", "shape", "noise", "device")
    timeout = 120
    number = 1
    repeat = (3, 20, 5.0)
    warmup_time = 0.05

    def setup(self, batch, shape, noise, device):
        from wbench.noise import perturb

        self.device = common.require_device(device)
        c, h, w = _SHAPES[shape]
        self.x = common.images(batch, c, h, w, device=self.device)
        self._perturb = perturb
        common.sync(self.device)

    def time_perturb(self, batch, shape, noise, device):
        self._perturb(self.x, _SIGMA, noise, seed=0, index=0, check=False)
        common.sync(self.device)

    def time_perturb_checked(self, batch, shape, noise, device):
        # With the input validation (one device sync per batch), as a one-off caller would use it.
        self._perturb(self.x, _SIGMA, noise, seed=0, index=0)
        common.sync(self.device)
