"""The compiled CPU implementation of the noise stream (``wbench/_csrc/noise_op.cpp``).

On the CPU (float32 or float64 images), drawing ``n`` noisy copies of an image as separate torch
operations costs the stream's integer arithmetic plus about ten element-wise passes, more than a
forward pass of a small network. The operator ``torch.ops.wbench_noise.noisy_copies`` does it in
one pass per copy, in cache: the Philox words, the Laplace transform and the flow stencil of
:mod:`wbench.noise_stream`, with the same floating-point operations in the same order, so its
copies equal the portable implementation's bit for bit. Copies are split over torch's own
intra-op threads with ``at::parallel_for``; the result does not depend on the split.

The operator is built with ``torch.utils.cpp_extension.load`` on first use (about 20 s) and cached
in torch's extension folder (``$TORCH_EXTENSIONS_DIR``, by default
``~/.cache/torch_extensions/<python>_<device>/wbench_noise_<hash>``, the hash naming the source
and flags; torch's lock file serialises concurrent first builds). Where no C++ compiler exists or
the build fails, one warning names the reason and callers use the portable implementation: the
same noise, more slowly. ``WBENCH_FASTNOISE=0`` forces the portable implementation.

The OpenMP region of ``at::parallel_for`` compiles to calls into an OpenMP runtime; the operator
is not linked against one, so the dynamic linker binds them to the runtime of ``libtorch_cpu``
(which the operator links), and the copies run on torch's own thread team.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import subprocess
import warnings
from pathlib import Path
from typing import Any

import torch

__all__ = ["available", "load", "noisy_copies", "usable"]

SOURCE = Path(__file__).resolve().parent / "_csrc" / "noise_op.cpp"
# -ffp-contract=off: every a + s * b is a rounded product, then a rounded sum, as in torch
CFLAGS = ("-O3", "-fopenmp", "-ffp-contract=off", "-fno-fast-math")


def _import_cpp_extension() -> Any:
    """``torch.utils.cpp_extension``, without the CUDA-home notice it logs on import on CPU-only machines."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        logger.setLevel(level)
    return cpp_extension


@functools.cache
def load() -> Any | None:
    """``torch.ops.wbench_noise`` (compiled on first use), or ``None`` if disabled or not buildable."""
    if os.environ.get("WBENCH_FASTNOISE", "1") == "0":
        return None
    # one build folder per source, flags and torch installation: two checkouts or virtualenvs that
    # shared a name would rewrite each other's build.ninja and recompile on every process start
    build_id = "\0".join((" ".join(CFLAGS), str(SOURCE), torch.__version__, str(Path(torch.__file__).parent)))
    digest = hashlib.sha256(SOURCE.read_bytes() + build_id.encode()).hexdigest()[:12]
    try:
        cpp_extension = _import_cpp_extension()
        cpp_extension.load(
            name=f"wbench_noise_{digest}",
            sources=[str(SOURCE)],
            extra_cflags=list(CFLAGS),
            is_python_module=False,
            verbose=False,
        )
    # no compiler / ninja (OSError, RuntimeError), a failed compile or link (CalledProcessError,
    # RuntimeError), a library that does not load (OSError)
    except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        warnings.warn(
            f"wbench: the fast CPU noise operator could not be built ({reason}); using the portable "
            "torch implementation of the same noise stream (identical results, slower)",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    return torch.ops.wbench_noise


def available() -> bool:
    """Whether the compiled operator is in use (builds it on first call)."""
    return load() is not None


def usable(x: torch.Tensor) -> bool:
    """Whether :func:`noisy_copies` applies to ``x``: CPU, float32 or float64, no autograd graph."""
    return (
        x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and not (x.requires_grad and torch.is_grad_enabled())
        and load() is not None
    )


def noisy_copies(
    x: torch.Tensor,
    scale: torch.Tensor,
    index: torch.Tensor,
    copy: torch.Tensor,
    *,
    seed: int,
    tag: int,
    flow: bool,
    out: torch.Tensor,
) -> torch.Tensor:
    """Write the copies addressed by ``(seed, index[g], copy[g], tag)`` into ``out`` and return it.

    ``x`` ``(1 or N, C, H, W)``, ``scale`` ``(1 or N,)`` (the Laplace scale of each copy) and ``out``
    ``(N, C, H, W)`` are contiguous CPU tensors of one dtype, float32 or float64; ``index`` and
    ``copy`` are int64 ``(N,)``. See :func:`wbench.noise.noisy_copies` for the definition.
    """
    ops = load()
    if ops is None:
        raise RuntimeError("the compiled noise operator is not available (see wbench.fastnoise)")
    return ops.noisy_copies(x, scale, index, copy, seed, int(tag), flow, out)
