"""wbench: verification and benchmark harness for Wasserstein robustness.

The public API is small (see ``__all__``); heavy submodules (cvxpy, POT, torchvision)
load on first use, so ``import wbench`` stays fast.

References
----------
.. [1] A. Levine, S. Feizi. "Wasserstein Smoothing: Certified Robustness against
   Wasserstein Adversarial Attacks." AISTATS 2020.
.. [2] A. T. Lin, Y. Dukler, W. Li, G. Montufar. "Wasserstein Diffusion Tikhonov
   Regularization." 2019.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> submodule that defines it
_EXPORTS = {
    "FlowPlan": "wbench.flow",
    "apply_flow": "wbench.flow",
    "compose_flows": "wbench.flow",
    "sample_laplace_flow": "wbench.flow",
    "w1": "wbench.transport",
    "optimal_flow_plan": "wbench.transport",
    "certified_radius": "wbench.certification",
    "WassersteinSmoothing": "wbench.smoothing",
    "LaplaceSmoothing": "wbench.smoothing",
    "wasserstein_grad_norm_sq": "wbench.gradnorm",
    "wasserstein_laplacian": "wbench.gradnorm",
    "gradient_penalty_loss": "wbench.penalties",
    "build_model": "wbench.models",
    "load_model": "wbench.models",
    "load_dataset": "wbench.data",
    "TrainConfig": "wbench.training",
    "train": "wbench.training",
    "Ground": "wbench.options",
    "Solver": "wbench.options",
    "Noise": "wbench.options",
    "GradNormImpl": "wbench.options",
    "Convention": "wbench.options",
    "resolve_device": "wbench.devices",
    "attack": "wbench.attacks",
    "AttackResult": "wbench.attacks",
    "AttackMethod": "wbench.options",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'wbench' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
