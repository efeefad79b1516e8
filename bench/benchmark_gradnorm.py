"""The Wasserstein gradient norm ||grad||_W^2 of Lin et al. (Eq. 7): conv vs dense vs edge list.

``"conv"`` is Algorithm 1 (shifted differences per neighbourhood offset), ``"edges"`` an explicit edge
list, ``"dense"`` the n x n Laplacian L(x) = D^T Lambda(x) D per sample, whose O(n^2) memory shows in
the ``peakmem_`` entries (asv's peakmem is the process's maximum RSS, so the work is done inside the
measured function, not in ``setup``).
"""

from __future__ import annotations

import wbench.gradnorm  # noqa: F401  (preimported for asv's forkserver, see bench/_common.py)
from bench import _common as common

_SHAPES = {"28x28x1": (1, 28, 28), "32x32x3": (3, 32, 32)}
_IMPLS = ["conv", "dense", "edges"]


def _inputs(batch: int, shape: str, device):
    c, h, w = _SHAPES[shape]
    x = common.images(batch, c, h, w, seed=1, device=device)
    grad = common.mnist_like(batch, c, h, w, density=1.0, seed=2, device=device) - 0.5
    return x, grad


class GradNormSuite:
    """Time of ``wasserstein_grad_norm_sq(x, grad, radius, impl)`` on a batch, by device."""

    params = (
        _IMPLS,
        list(_SHAPES),
        common.grid([2], [2, 4]),
        common.grid([8], [8, 32, 64]),
        list(common.DEVICES),
    )
    param_names = ("impl", "shape", "radius", "batch", "device")
    # One process per case; 5-50 samples of one call each, sampling stops after 1.5 s.
    rounds = 1
    number = 1
    repeat = (5, 50, 1.5)
    min_run_count = 5
    warmup_time = 0.0  # the warm-up is in setup
    timeout = 60

    def setup(self, impl, shape, radius, batch, device):
        self.device = common.require_device(device)
        key = (type(self).__name__, impl, shape, radius, batch, device)
        vars(self).update(common.per_process(key, lambda: self._make(impl, shape, radius, batch)))

    def _make(self, impl: str, shape: str, radius: int, batch: int) -> dict:
        from wbench.gradnorm import wasserstein_grad_norm_sq

        self.x, self.grad = _inputs(batch, shape, self.device)
        self._norm = wasserstein_grad_norm_sq
        # Two calls outside the timing: the cached volume form / offsets / edge lists are built, and
        # first-call effects (oneDNN primitives, allocator growth) are paid; a cold conv at 28x28 was
        # timed at 51 ms against 0.8 ms warm.
        for _ in range(2):
            self._norm(self.x, self.grad, radius=radius, impl=impl)
        common.sync(self.device)
        return dict(vars(self))

    def time_grad_norm_sq(self, impl, shape, radius, batch, device):
        self._norm(self.x, self.grad, radius=radius, impl=impl)
        common.sync(self.device)


class GradNormMemSuite:
    """Peak host memory (RSS) of one ``wasserstein_grad_norm_sq`` call on the CPU."""

    params = (_IMPLS, list(_SHAPES), common.grid([2], [2, 4]), common.grid([8], [8, 32]))
    param_names = ("impl", "shape", "radius", "batch")
    rounds = 1  # peakmem: one call per process
    timeout = 60

    def setup(self, impl, shape, radius, batch):
        from wbench.gradnorm import wasserstein_grad_norm_sq

        self.x, self.grad = _inputs(batch, shape, "cpu")
        self._norm = wasserstein_grad_norm_sq

    def peakmem_grad_norm_sq(self, impl, shape, radius, batch):
        self._norm(self.x, self.grad, radius=radius, impl=impl)


class GradNormCudaMemSuite:
    """Peak CUDA memory allocated by one ``wasserstein_grad_norm_sq`` call (skipped without a GPU)."""

    params = (_IMPLS, list(_SHAPES), common.grid([2], [2, 4]), common.grid([8], [8, 32]))
    param_names = ("impl", "shape", "radius", "batch")
    rounds = 1
    timeout = 60
    unit = "MiB"

    def setup(self, impl, shape, radius, batch):
        from wbench.gradnorm import wasserstein_grad_norm_sq

        self.device = common.require_device("cuda")
        self.x, self.grad = _inputs(batch, shape, self.device)
        self._norm = wasserstein_grad_norm_sq

    def track_peak_cuda_mib(self, impl, shape, radius, batch):
        import torch

        common.sync(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        base = torch.cuda.memory_allocated(self.device)
        self._norm(self.x, self.grad, radius=radius, impl=impl)
        common.sync(self.device)
        return (torch.cuda.max_memory_allocated(self.device) - base) / 2**20
