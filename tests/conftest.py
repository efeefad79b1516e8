"""Fixtures shared by the test modules."""

from __future__ import annotations

import pytest
import torch

from wbench.models import build_model
from wbench.runio import atomic_torch_save


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> str:
    """An untrained, seeded ``digits_cnn`` (width 4) saved as a ``wbench train`` checkpoint.

    For the command-line tests that need a loadable model, not an accurate one.
    """
    torch.manual_seed(0)
    kwargs = {"num_classes": 10, "width": 4}
    model = build_model("digits_cnn", **kwargs)
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    atomic_torch_save(
        {
            "model_name": "digits_cnn",
            "model_kwargs": kwargs,
            "state_dict": model.state_dict(),
            "config": {"dataset": "digits", "noise": "wasserstein", "sigma": 0.02},
            "seed": 0,
            "environment": {},
        },
        path,
    )
    return str(path)
