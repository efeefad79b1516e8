"""The options of one attack method: its defaults updated by the caller's, names and values checked."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


def method_config(
    method: str,
    defaults: Mapping[str, Any],
    options: Mapping[str, Any],
    *,
    positive: Sequence[str] = (),
    counts: Sequence[str] = (),
) -> dict[str, Any]:
    """``defaults`` updated by ``options``; a ``ValueError`` for an unknown name or a bad value.

    ``defaults`` holds every option of ``method``; its entry ``steps`` (the iteration count) is
    given to the method separately, so it is not an option. The names in ``positive`` must be
    finite numbers > 0 and those in ``counts`` positive integers.
    """
    allowed = sorted(set(defaults) - {"steps"})
    unknown = set(options) - set(allowed)
    if unknown:
        raise ValueError(f"unknown {method} options {sorted(unknown)}; expected {allowed}")
    cfg = {**defaults, **options}
    for name in positive:
        if not (isinstance(cfg[name], int | float) and math.isfinite(cfg[name]) and cfg[name] > 0):
            raise ValueError(f"{method} option {name} must be a finite number > 0, got {cfg[name]!r}")
    for name in counts:
        if not (isinstance(cfg[name], int) and cfg[name] >= 1):
            raise ValueError(f"{method} option {name} must be a positive integer, got {cfg[name]!r}")
    return cfg
