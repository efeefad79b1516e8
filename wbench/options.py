"""String-valued options of the public API, as Enums (RobustBench style).

Every public function that takes an option accepts either the Enum member or its
string value; anything else raises a ``ValueError`` that lists the valid choices.
"""

from __future__ import annotations

from enum import Enum, StrEnum
from typing import TypeVar

E = TypeVar("E", bound=Enum)


class Ground(StrEnum):
    """Ground metric between pixel positions for W1."""

    L1 = "l1"
    L2 = "l2"


class Solver(StrEnum):
    """Exact W1 solver."""

    POT = "pot"
    LP = "lp"
    NETWORK = "network"


class Noise(StrEnum):
    """Smoothing noise: flow-space Laplace (Wasserstein) or pixel Laplace (baseline)."""

    WASSERSTEIN = "wasserstein"
    LAPLACE = "laplace"


class GradNormImpl(StrEnum):
    """Implementation of the Wasserstein gradient norm (Lin et al., Eq. 7)."""

    CONV = "conv"
    DENSE = "dense"
    EDGES = "edges"


class AttackMethod(StrEnum):
    """Wasserstein attack (:func:`wbench.attack`).

    ``flow``: projected gradient ascent over local flow plans (Lemma 1 of Levine & Feizi);
    ``sinkhorn``: Wong et al.'s projected Sinkhorn PGD (2019); ``frank_wolfe``: Wu, Wang & Yu's
    Frank-Wolfe with the dual linear minimisation oracle (ICML 2020).
    """

    FLOW = "flow"
    SINKHORN = "sinkhorn"
    FRANK_WOLFE = "frank_wolfe"


class Convention(StrEnum):
    """Certification convention.

    ``cohen``: abstain when the lower bound p_A is below 1/2 (Cohen et al., 2019).
    ``authors``: the released code of Levine & Feizi; a correct guess whose lower
    bound is at most 1/2 counts as certified at radius 0.
    """

    COHEN = "cohen"
    AUTHORS = "authors"


def parse_option(enum_cls: type[E], value: E | str, name: str) -> E:
    """Return ``enum_cls(value)`` or raise a ``ValueError`` naming the valid choices."""
    if isinstance(value, enum_cls):
        return value
    if isinstance(value, str):
        try:
            return enum_cls(value.lower())
        except ValueError:
            pass
    choices = ", ".join(repr(m.value) for m in enum_cls)
    raise ValueError(f"unknown {name} {value!r}; expected one of {choices}")
