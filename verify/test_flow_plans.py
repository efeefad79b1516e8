"""Definition 3.1 of Levine & Feizi: local flow plans conserve mass and compose (Eq. 6)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wbench import FlowPlan, apply_flow
from wbench.flow import compose_flows
from wbench.noise import sample_laplace_flow

TOL = {torch.float64: 1e-12, torch.float32: 1e-5}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@settings(max_examples=25, deadline=None)
@given(h=st.integers(1, 9), w=st.integers(1, 9), c=st.integers(1, 3), seed=st.integers(0, 2**31 - 1))
def test_flow_conserves_mass_and_composes(claims, dtype, h, w, c, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, c, h, w, generator=g, dtype=dtype)
    a = sample_laplace_flow(x.shape, 0.3, seed=seed, index=0, dtype=dtype)
    b = sample_laplace_flow(x.shape, 0.3, seed=seed, index=1, dtype=dtype)
    y = apply_flow(x, a)
    case = f"{dtype} {c}x{h}x{w}"
    claims.close(
        "Def 3.1: Delta conserves mass per channel",
        y.sum((-2, -1)),
        x.sum((-2, -1)),
        rtol=TOL[dtype],
        atol=TOL[dtype],
        case=case,
    )
    claims.close(
        "Eq. 6: Delta(Delta(x,a),b) = Delta(x,a+b)",
        apply_flow(y, b),
        apply_flow(x, compose_flows(a, b)),
        rtol=TOL[dtype],
        atol=TOL[dtype],
        case=case,
    )


def test_flow_direction_matches_definition(claims):
    x = torch.zeros(3, 2, dtype=torch.float64)
    x[1, 0] = 1.0
    v = torch.zeros(2, 2, dtype=torch.float64)
    v[0, 0] = 0.25  # moves mass from (1, 0) to (0, 0)
    h = torch.zeros(3, 1, dtype=torch.float64)
    h[1, 0] = -0.5  # moves mass from (1, 0) to (1, 1)
    y = apply_flow(x, FlowPlan(v, h))
    expected = torch.tensor([[0.25, 0.0], [0.25, 0.5], [0.0, 0.0]], dtype=torch.float64)
    claims.close("Def 3.1: sign convention of vertical/horizontal flows", y, expected, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_flow_noise_is_laplace_with_std_sigma(claims, dtype):
    """Eq. 33: every flow variable is i.i.d. Laplace with standard deviation sigma (scale sigma/sqrt 2).

    A one-sample Kolmogorov-Smirnov test at level 1e-3 against scipy's Laplace CDF; a sampler with the
    wrong scale (e.g. sigma instead of sigma/sqrt 2) has D ~ 0.1, far above the critical value.
    """
    import math

    from scipy import stats

    sigma = 0.37
    plan = sample_laplace_flow((40, 3, 30, 31), sigma, seed=1234, dtype=dtype)
    z = torch.cat([plan.vertical.flatten(), plan.horizontal.flatten()]).double().numpy()
    n = z.size
    ks = stats.kstest(z, stats.laplace(scale=sigma / math.sqrt(2)).cdf)
    critical = stats.kstwo(n).ppf(1 - 1e-3)
    claims.below(
        "Eq. 33: flow variables ~ Laplace(std sigma) (KS)", ks.statistic, critical, case=f"{dtype} n={n}"
    )
    # the sample std is within 5 standard errors of sigma (Var of s^2 for Laplace: 5 sigma^4 / n)
    se = sigma * math.sqrt(5.0 / n) / 2
    claims.close(
        "Eq. 33: flow variables ~ Laplace(std sigma) (std)",
        z.std(),
        sigma,
        rtol=0,
        atol=5 * se,
        case=f"{dtype} n={n}",
    )
