"""Throughput of flow-plan sampling, Delta(x, delta) and mass-space smoothing noise.

Levine & Feizi's Wasserstein smoothing draws one Laplace flow plan per noise sample (Eq. 33) and
applies it with Delta (Definition 3.1); the Laplace baseline draws one Laplace variable per pixel.
These are the per-sample costs that certification and noise training pay on top of the network.
"""

from __future__ import annotations

import wbench.flow  # noqa: F401  (preimported for asv's forkserver, see bench/_common.py)
import wbench.noise  # noqa: F401  (preimported for asv's forkserver, see bench/_common.py)
from bench import _common as common

_SHAPES = {"28x28x1": (1, 28, 28), "32x32x3": (3, 32, 32)}
_SIGMA = 0.01


class FlowSamplingSuite:
    """Drawing a Laplace flow plan per image (``sample_laplace_flow``) and applying it (``apply_flow``)."""

    params = (common.grid([1000], [1, 100, 1000, 10000]), list(_SHAPES), list(common.DEVICES))
    param_names = ("batch", "shape", "device")
    # One process per case; 5-50 samples of one call each, sampling stops after 1.5 s.
    rounds = 1
    number = 1
    repeat = (5, 50, 1.5)
    min_run_count = 5
    warmup_time = 0.0  # the warm-up is in setup
    timeout = 60

    def setup(self, batch, shape, device):
        self.device = common.require_device(device)
        key = (type(self).__name__, batch, shape, device)
        vars(self).update(common.per_process(key, lambda: self._make(batch, shape, device)))

    def _make(self, batch: int, shape: str, device_name: str) -> dict:
        from wbench.flow import apply_flow
        from wbench.noise import sample_laplace_flow

        device = self.device
        c, h, w = _SHAPES[shape]
        self.image_shape = (batch, c, h, w)
        self.x = common.images(batch, c, h, w, device=device)
        self.plan = sample_laplace_flow(self.image_shape, _SIGMA, seed=0, device=device)
        self._sample, self._apply = sample_laplace_flow, apply_flow
        # One call of each outside the timing: first-call allocations, thread-pool start.
        self.time_sample_laplace_flow(batch, shape, device_name)
        self.time_apply_flow(batch, shape, device_name)
        return dict(vars(self))

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
    # One process per case; 5-50 samples of one call each, sampling stops after 1.5 s.
    rounds = 1
    number = 1
    repeat = (5, 50, 1.5)
    min_run_count = 5
    warmup_time = 0.0  # the warm-up is in setup
    timeout = 60

    def setup(self, batch, shape, noise, device):
        self.device = common.require_device(device)
        key = (type(self).__name__, batch, shape, noise, device)
        vars(self).update(common.per_process(key, lambda: self._make(batch, shape, noise, device)))

    def _make(self, batch: int, shape: str, noise: str, device_name: str) -> dict:
        from wbench.noise import perturb

        c, h, w = _SHAPES[shape]
        self.x = common.images(batch, c, h, w, device=self.device)
        self._perturb = perturb
        # One call of each outside the timing: first-call allocations, thread-pool start.
        self.time_perturb(batch, shape, noise, device_name)
        self.time_perturb_checked(batch, shape, noise, device_name)
        return dict(vars(self))

    def time_perturb(self, batch, shape, noise, device):
        self._perturb(self.x, _SIGMA, noise, seed=0, index=0, check=False)
        common.sync(self.device)

    def time_perturb_checked(self, batch, shape, noise, device):
        # With the input validation (one device sync per batch), as a one-off caller would use it.
        self._perturb(self.x, _SIGMA, noise, seed=0, index=0)
        common.sync(self.device)
