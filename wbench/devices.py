"""Device selection: never hard-code ``cuda``."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Return a ``torch.device`` for ``"cpu"``, ``"cuda[:i]"``, ``"auto"`` or ``None``.

    ``None`` and ``"auto"`` pick CUDA when available, else the CPU. Asking for CUDA
    on a machine without it raises ``ValueError``.
    """
    if device is None or (isinstance(device, str) and device.lower() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"unknown device {device!r}; use 'cpu', 'cuda', 'cuda:N' or 'auto'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available on this machine")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device type {dev.type!r}; use 'cpu', 'cuda' or 'auto'")
    return dev
