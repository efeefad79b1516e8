"""wbench: verification and benchmark harness for Wasserstein robustness.

The public API is the short list of README.md's "Public API" (``__all__``). Operational
helpers stay in their modules: :class:`wbench.training.TrainConfig` and
:func:`wbench.training.train`, :func:`wbench.models.build_model` and
:func:`wbench.models.load_model`, :func:`wbench.devices.resolve_device`, the option enums of
:mod:`wbench.options`, :func:`wbench.flow.compose_flows`,
:func:`wbench.penalties.gradient_penalty_loss`, :func:`wbench.gradnorm.wasserstein_laplacian`, and
the rest.

cvxpy, POT, scipy.stats, torchvision and scikit-learn load inside the functions that need
them: ``import wbench`` loads torch (and scipy.sparse), and nothing heavier.

References
----------
.. [1] A. Levine, S. Feizi. "Wasserstein Smoothing: Certified Robustness against
   Wasserstein Adversarial Attacks." AISTATS 2020.
.. [2] A. T. Lin, Y. Dukler, W. Li, G. Montufar. "Wasserstein Diffusion Tikhonov
   Regularization." 2019.
"""

__version__ = "0.1.0"

from wbench.attacks import AttackResult, attack
from wbench.certification import certified_radius
from wbench.data import load_dataset
from wbench.flow import FlowPlan, apply_flow
from wbench.gradnorm import wasserstein_grad_norm_sq
from wbench.smoothing import LaplaceSmoothing, WassersteinSmoothing
from wbench.transport import optimal_flow_plan, w1

__all__ = [
    "FlowPlan",
    "apply_flow",
    "w1",
    "optimal_flow_plan",
    "certified_radius",
    "wasserstein_grad_norm_sq",
    "load_dataset",
    "WassersteinSmoothing",
    "LaplaceSmoothing",
    "attack",
    "AttackResult",
    "__version__",
]
