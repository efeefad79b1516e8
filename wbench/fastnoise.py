"""Fused CPU sampling of smoothing noise (the compiled kernel ``wbench/_csrc/fastnoise.c``).

On the CPU in float32, drawing ``n`` noisy copies ``x + s * div(L)`` of an image (Wasserstein
smoothing, Levine & Feizi Eq. 33 with Definition 3.1) or ``x + s * L`` (the Laplace baseline)
as separate torch operations costs one random-number pass and about ten element-wise passes
over ``n * (2HW - H - W)`` variables, comparable to a forward pass of a small network. The
kernel does it in one pass per image, in cache: Philox4x32-10 words (Salmon et al., 2011;
checked against the Random123 known-answer vectors; AVX-512 where the CPU has it), the
inverse-CDF Laplace transform of :func:`wbench.flow.laplace_from_words`, and the flow stencil.

Batches run on ``torch.get_num_threads()`` threads of torch's own OpenMP team: the kernel calls
``GOMP_parallel`` of the OpenMP runtime torch has loaded, so no second thread pool competes with
torch's (whose threads keep spinning for a while after each operator). Where that runtime
cannot be found, the kernel runs on the calling thread.

Image ``g`` of a call draws from the Philox stream with counters ``(j, 0, lo32(g), hi32(g))``
under the call's 64-bit key, so the noise of an image depends only on the key and its index,
never on how a batch is split into sub-batches or threads.

The kernel is built by ``pip install`` as an optional extension. Where it is missing (no C
compiler, another platform) or disabled with ``WBENCH_FASTNOISE=0``, :func:`available` is
``False`` and callers use the torch implementation, which draws different (equally
distributed) noise for the same seed.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os

import numpy as np
import torch

__all__ = ["available", "noisy_copies", "philox4x32_10", "random_key", "usable"]


def _load() -> ctypes.CDLL | None:
    if os.environ.get("WBENCH_FASTNOISE", "1") == "0":
        return None
    spec = importlib.util.find_spec("wbench._fastnoise")
    if spec is None or spec.origin is None:
        return None
    try:
        lib = ctypes.CDLL(spec.origin)
    except OSError:
        return None
    u32, i64, u64, ptr = ctypes.c_uint32, ctypes.c_int64, ctypes.c_uint64, ctypes.c_void_p
    lib.wb_philox4x32_10.argtypes = [u32, u32, u32, u32, u32, u32, i64, ptr]
    lib.wb_philox4x32_10.restype = None
    lib.wb_philox_image_words.argtypes = [u32, u32, u32, u32, i64, ptr, ctypes.c_int]
    lib.wb_philox_image_words.restype = None
    images = [ptr, i64, ptr, i64, ptr, i64, i64, i64, i64, u32, u32, u64, ctypes.c_int]
    lib.wb_noisy_copies_f32.argtypes = images
    lib.wb_noisy_copies_f32.restype = ctypes.c_int
    lib.wb_noisy_copies_f32_parallel.argtypes = [*images, ptr, ctypes.c_uint, i64]
    lib.wb_noisy_copies_f32_parallel.restype = ctypes.c_int
    return lib


def _torch_gomp_parallel() -> int | None:
    """Address of ``GOMP_parallel`` in the OpenMP runtime torch has loaded, or ``None``."""
    if "OpenMP" not in torch.__config__.parallel_info():
        return None
    try:
        with open("/proc/self/maps") as maps:  # Linux: the loaded libraries
            paths = {line.split()[-1] for line in maps if "libgomp" in line or "libiomp" in line}
    except OSError:
        return None
    torch_lib = os.path.dirname(torch.__file__)
    for path in sorted(paths, key=lambda p: not p.startswith(torch_lib)):  # torch's own runtime first
        try:  # dlopen of a loaded library returns that same instance
            return ctypes.cast(ctypes.CDLL(path).GOMP_parallel, ctypes.c_void_p).value
        except (OSError, AttributeError):
            continue
    return None


_LIB = _load()
_GOMP_PARALLEL = _torch_gomp_parallel() if _LIB is not None else None


def available() -> bool:
    """Whether the compiled kernel is loaded (built, and not disabled by ``WBENCH_FASTNOISE=0``)."""
    return _LIB is not None


def usable(x: torch.Tensor) -> bool:
    """Whether :func:`noisy_copies` applies to images like ``x`` (CPU, float32, kernel loaded)."""
    return _LIB is not None and x.device.type == "cpu" and x.dtype == torch.float32


def random_key(generator: torch.Generator | None = None) -> tuple[int, int]:
    """A Philox key (two 32-bit words) drawn from ``generator``: a new noise stream."""
    k0, k1 = torch.randint(0, 2**32, (2,), dtype=torch.int64, generator=generator).tolist()
    return k0, k1


def _lib() -> ctypes.CDLL:
    if _LIB is None:
        raise RuntimeError("the compiled fastnoise kernel is not available (see wbench.fastnoise)")
    return _LIB


def philox4x32_10(key: tuple[int, int], counter: tuple[int, int, int, int], blocks: int) -> np.ndarray:
    """Philox4x32-10 words of counters ``counter + j`` (j < ``blocks``, carried into word 1), as uint32.

    Word ``i`` of block ``j`` is element ``4 j + i``. The portable reference, for known-answer tests.
    """
    out = np.empty(4 * blocks, dtype=np.uint32)
    _lib().wb_philox4x32_10(*key, *counter, blocks, out.ctypes.data)
    return out


def image_words(key: tuple[int, int], image: int, blocks: int, *, simd: bool = True) -> np.ndarray:
    """The words that image ``image`` draws (counters ``(j, 0, lo32(image), hi32(image))``), as uint32.

    ``simd=False`` forces the portable loop instead of the AVX-512 one, for tests.
    """
    out = np.empty(4 * blocks, dtype=np.uint32)
    _lib().wb_philox_image_words(*key, image & 0xFFFFFFFF, image >> 32, blocks, out.ctypes.data, int(simd))
    return out


def noisy_copies(
    x: torch.Tensor,
    scale: torch.Tensor,
    out: torch.Tensor,
    *,
    key: tuple[int, int],
    first_image: int = 0,
    flow: bool = True,
    threads: int | None = None,
) -> torch.Tensor:
    """Write noisy copies of ``x`` into ``out`` ``(N, C, H, W)`` with the compiled kernel.

    Parameters
    ----------
    x : torch.Tensor
        ``(1, C, H, W)`` (one image, broadcast) or ``(N, C, H, W)``, contiguous CPU float32.
    scale : torch.Tensor
        The Laplace scale ``s`` of each copy: ``(1,)`` (shared) or ``(N,)``, float32.
    out : torch.Tensor
        Contiguous CPU float32 ``(N, C, H, W)``; overwritten and returned.
    key : (int, int)
        The Philox key (:func:`random_key`).
    first_image : int
        Index of ``out[0]`` in the stream: a sampler that draws ``n`` copies in sub-batches
        passes the number of copies drawn so far.
    flow : bool
        ``True``: Wasserstein flow noise ``x + s div(L)``; ``False``: pixel noise ``x + s L``.
    threads : int, optional
        Threads of torch's OpenMP team to use (default ``torch.get_num_threads()``). The
        result does not depend on it.
    """
    lib = _lib()
    n, c, h, w = out.shape
    for name, t in (("x", x), ("scale", scale), ("out", out)):
        if t.device.type != "cpu" or t.dtype != torch.float32 or not t.is_contiguous():
            raise ValueError(f"{name} must be a contiguous CPU float32 tensor, got {t.dtype} on {t.device}")
    if x.ndim != 4 or tuple(x.shape[1:]) != (c, h, w) or x.shape[0] not in (1, n):
        raise ValueError(f"x of shape {tuple(x.shape)} does not match out of shape {tuple(out.shape)}")
    if scale.ndim != 1 or scale.shape[0] not in (1, n):
        raise ValueError(f"scale must have shape (1,) or ({n},), got {tuple(scale.shape)}")
    if not (0 <= first_image and first_image + n <= 2**64):
        raise ValueError(f"first_image must be in [0, 2**64 - {n}], got {first_image}")
    args = (
        x.data_ptr(),
        0 if x.shape[0] == 1 else c * h * w,
        scale.data_ptr(),
        0 if scale.shape[0] == 1 else 1,
        out.data_ptr(),
        n,
        c,
        h,
        w,
        key[0],
        key[1],
        first_image,
        int(flow),
    )
    threads = torch.get_num_threads() if threads is None else int(threads)
    if _GOMP_PARALLEL is not None and threads > 1 and n > 1:
        chunk = max(1, n // (4 * threads))  # an atomic counter hands chunks to the team
        status = lib.wb_noisy_copies_f32_parallel(*args, _GOMP_PARALLEL, threads, chunk)
    else:
        status = lib.wb_noisy_copies_f32(*args)
    if status:
        raise MemoryError("fastnoise: could not allocate the per-image scratch buffer")
    return out
