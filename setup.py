"""Build script for the optional compiled kernel; all other metadata lives in pyproject.toml.

``wbench._fastnoise`` (wbench/_csrc/fastnoise.c) is a plain C shared library loaded with ctypes
by :mod:`wbench.fastnoise`. It is optional: where it cannot be built, the install still succeeds
and wbench uses its torch implementation of the same sampling.
"""

import sys

from setuptools import Extension, setup

ext_modules = []
if sys.platform.startswith("linux"):
    ext_modules.append(
        Extension(
            "wbench._fastnoise",
            sources=["wbench/_csrc/fastnoise.c"],
            # -ffast-math at compile time only (vectorised logf from glibc's libmvec); the link step
            # does not see it, so loading the library never switches on flush-to-zero in the process
            extra_compile_args=["-O3", "-std=c11", "-ffast-math", "-fopenmp-simd"],
            libraries=["mvec", "m"],
            optional=True,
        )
    )

setup(ext_modules=ext_modules)
