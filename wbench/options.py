"""Every string-valued option of wbench, as an Enum (RobustBench style).

Strings are parsed once, where they enter (a public function, :class:`~wbench.training.TrainConfig`,
the command line), with :func:`parse_option`; everything further in takes the Enum. Every public
function that takes an option accepts either the Enum member or its string value; anything else
raises a ``ValueError`` that lists the valid choices. An option that can be absent has an explicit
``NONE`` member (value ``"none"``); an option that cannot has none, so that no function has to
refuse it. The string values are what configs, checkpoints and command-line flags store.
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


class TrainingNoise(StrEnum):
    """Noise of noise training (Levine & Feizi, Appendix B): a smoothing :class:`Noise`, or none."""

    NONE = "none"
    WASSERSTEIN = Noise.WASSERSTEIN.value
    LAPLACE = Noise.LAPLACE.value


class PenaltyMetric(StrEnum):
    """Metric of the input-gradient penalty (Lin et al., Appendix D): G^{-1} = I or L(x) (Eq. 7)."""

    EUCLIDEAN = "euclidean"
    WASSERSTEIN = "wasserstein"


class TrainingPenalty(StrEnum):
    """Gradient-norm penalty of a training run: a :class:`PenaltyMetric`, or none."""

    NONE = "none"
    EUCLIDEAN = PenaltyMetric.EUCLIDEAN.value
    WASSERSTEIN = PenaltyMetric.WASSERSTEIN.value


class Neighbourhood(StrEnum):
    """Shape of the pixel graph's neighbourhood of radius ``r`` (Lin et al., Section 4)."""

    EUCLIDEAN = "euclidean"
    MANHATTAN = "manhattan"


class EdgeWeight(StrEnum):
    """Named edge-weight rules of the pixel graph, functions of the Euclidean offset length."""

    CONSTANT = "constant"
    INVERSE_DISTANCE = "inverse_distance"


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
