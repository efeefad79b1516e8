"""One iteration of each Wasserstein attack against a forward+backward pass of the same network.

Every attack iteration needs the loss gradient (one forward and one backward pass of the network)
plus its own geometry: the flow attack an L1-ball projection and a non-negativity step (the goal is
at most 3x a forward+backward), the projected Sinkhorn attack an entropic projection (Wong et al.'s
MNIST preset: lambda 1000, 7x7 kernel, up to 400 inner iterations), Frank-Wolfe a bisection over
the dual of its linear minimisation oracle (Wu et al.: 5x5 kernel, up to 50 steps). Inputs: a
batch of 64 MNIST-5k 28x28 digits and Wong et al.'s MNIST network, labelled with its own
predictions so that no image starts out fooled. ``track_ratio_to_forward_backward`` interleaves
one iteration with one forward+backward in one process (robust to machine load).

Measured on a shared 2-core CPU under contention, one torch thread, median of interleaved pairs
(forward+backward 12-17 ms): flow 1.5x (2.5x before the flat-plan rewrite), frank_wolfe 9.5x
(33x), sinkhorn 49x, 0.6 s per iteration (436x, 6.8 s, before the separable window passes and the
per-example stopping of the projection). Every method is in the reduced grid.
"""

from __future__ import annotations

from bench import _common as common

METHODS = ["flow", "sinkhorn", "frank_wolfe"]


class AttackIterationSuite:
    """Seconds per iteration (B = 64, 28x28), and its ratio to one forward+backward pass."""

    params = (["forward_backward", *METHODS], common.DEVICES)
    param_names = ["step", "device"]
    rounds_per_call = 3
    unit = "ratio"  # track_: seconds per iteration / seconds per forward+backward
    # One process per case; 1-5 samples of one iteration each, sampling stops after 3 s.
    rounds = 1
    number = 1
    repeat = (1, 5, 3.0)
    min_run_count = 1
    warmup_time = 0.0  # the warm-up is in setup
    timeout = 180

    def setup(self, step, device):
        import torch
        import torch.nn.functional as F

        from wbench.attacks import flow, frank_wolfe, sinkhorn
        from wbench.attacks.objective import Objective
        from wbench.models import build_model
        from wbench.options import Ground

        self.device = common.require_device(device)
        torch.manual_seed(0)
        self.model = build_model("mnist_wong").to(self.device).eval()
        self.x = common.mnist5k_images(64, device=self.device)
        with torch.no_grad():
            self.y = self.model(self.x).argmax(1)
        objective = Objective(self.model)
        runs = {"flow": flow.run, "sinkhorn": sinkhorn.run, "frank_wolfe": frank_wolfe.run}
        eps = 0.05

        def forward_backward():
            x = self.x.clone().requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(self.model(x), self.y), x)
            common.sync(self.device)

        def iteration(name):
            runs[name](objective, self.x, self.y, eps, Ground.L2, 1)
            common.sync(self.device)

        self._fb = forward_backward
        self._step = forward_backward if step == "forward_backward" else (lambda: iteration(step))
        self._step()  # warm-up outside the timing: first-call allocations, oneDNN primitives

    def time_iteration(self, step, device):
        self._step()

    def track_ratio_to_forward_backward(self, step, device):
        t_fb, t_step = common.interleaved_times(self._fb, self._step, self.rounds_per_call, warmup=1)
        return common.median_pair_ratio(t_step, t_fb)
