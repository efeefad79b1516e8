"""The package namespace: ``wbench.__all__`` is README.md's "Public API", and the import stays light."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import wbench

ROOT = Path(__file__).resolve().parents[1]


def _readme_api_block() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## Public API\n\n```python\n(.*?)^```", text, re.S | re.M)
    assert match is not None, "README.md has no Public API code block"
    return match.group(1)


def test_all_is_the_readme_public_api():
    block = _readme_api_block()
    exported = set(wbench.__all__) - {"__version__"}
    assert set(re.findall(r"\bwbench\.(\w+)", block)) <= exported
    # a name may also appear unprefixed (a return type such as ``-> FlowPlan``)
    assert [name for name in sorted(exported) if not re.search(rf"\b{name}\b", block)] == []
    assert len(wbench.__all__) == len(set(wbench.__all__))
    assert all(hasattr(wbench, name) for name in wbench.__all__)


def test_helpers_stay_in_their_modules():
    from wbench.flow import compose_flows
    from wbench.gradnorm import wasserstein_laplacian
    from wbench.options import Ground
    from wbench.training import TrainConfig, train

    for helper in (compose_flows, wasserstein_laplacian, Ground, TrainConfig, train):
        assert helper.__name__ not in wbench.__all__


def test_import_wbench_leaves_the_heavy_libraries_unloaded():
    heavy = ("cvxpy", "ot", "torchvision", "sklearn", "matplotlib", "scipy.stats")
    code = f"import sys, wbench; print(' '.join(m for m in {heavy!r} if m in sys.modules))"
    path = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert res.stdout.split() == []
