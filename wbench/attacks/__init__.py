"""Wasserstein adversarial attacks judged by exact W1: the empirical (upper-bound) side of robustness.

- :mod:`wbench.attacks.flow`: projected gradient ascent over local flow plans (Levine & Feizi, Lemma 1);
- :mod:`wbench.attacks.sinkhorn`: Wong et al.'s projected Sinkhorn PGD, in the log domain;
- :mod:`wbench.attacks.frank_wolfe`: Wu, Wang & Yu's Frank-Wolfe with the dual LMO;
- :mod:`wbench.attacks.core`: :func:`attack` and :class:`AttackResult`.
"""

from wbench.attacks.core import AttackResult, attack

__all__ = ["AttackResult", "attack"]
