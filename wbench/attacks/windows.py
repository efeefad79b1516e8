"""Local-transport windows: the Gibbs kernel of a ``k x k`` window in the log domain.

A local transport plan sends mass from pixel ``x`` to the pixels ``x + d`` for the ``k * k``
offsets ``d = (di, dj)``, ``|di|, |dj| <= k // 2``, of a window (Wong et al., Section 4.1). The
entropic projection works with the Gibbs kernel ``K_psi(d) = exp(-psi C(d) - 1)`` of a symmetric
cost ``C(d) = C(-d)`` and needs, per pixel, log-sum-exps over the window:

    lse(v)[x]     = log sum_d K_psi(d) exp(v[x + d])                    (terms outside the image: 0)
    moment_m(v)[x] = log sum_d K_psi(d) C(d)**m exp(v[x + d]),   m = 0, 1, 2.

:class:`WindowKernel` evaluates them in two ways:

- **general**: unfold the ``k * k`` window of every pixel (``k**2`` terms per pixel);
- **separable**, when ``C(d) = a(di) + b(dj)`` (Wong et al.'s squared Euclidean cost
  ``di**2 + dj**2``, or the L1 distance ``|di| + |dj|``): then ``K_psi(d)`` factorises,
  ``exp(-psi a(di) - 1) exp(-psi b(dj))``, and every window sum is a sum along the rows of the image
  followed by a sum along its columns (``2 k`` terms per pixel). The moments follow from
  ``C = a + b`` and ``C**2 = a**2 + 2 a b + b**2``: the row pass keeps the ``b``-weighted means
  ``rho_m = sum_dj K b**m e^v / sum_dj K e^v`` beside its log-sum-exp, the column pass combines them.

Both are computed with the window maximum subtracted before ``exp`` (a log-sum-exp), so nothing
overflows for log-potentials of any size; ``-inf`` entries (pixels without mass) are allowed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_SEPARABLE_RTOL = 1e-12


def window_columns(v: torch.Tensor, kernel_size: int, fill: float) -> torch.Tensor:
    """``cols[n, c, k, i] = v[n, c, i + offset_k]`` (``fill`` outside the image), shape (N, C, k*k, H*W)."""
    n, c, h, w = v.shape
    r = kernel_size // 2
    padded = F.pad(v.reshape(n * c, 1, h, w), (r, r, r, r), value=fill)
    return F.unfold(padded, kernel_size).view(n, c, kernel_size * kernel_size, h * w)


def fold_columns(cols: torch.Tensor, shape: tuple[int, ...], kernel_size: int) -> torch.Tensor:
    """The adjoint of :func:`window_columns`: ``out[j] = sum of cols[k, i] over i + offset_k = j``."""
    n, c, h, w = shape
    r = kernel_size // 2
    out = F.fold(cols.reshape(n * c, -1, h * w), (h + 2 * r, w + 2 * r), kernel_size)
    return out[:, :, r : r + h, r : r + w].reshape(n, c, h, w)


def _safe_max(t: torch.Tensor, dim: int) -> torch.Tensor:
    """``t.amax(dim, keepdim=True)`` with ``-inf`` (an empty window) set to 0: ``t - m`` is never NaN."""
    m = t.amax(dim, keepdim=True)
    return torch.where(torch.isfinite(m), m, torch.zeros_like(m))


def _window_1d(v: torch.Tensor, dim: int, kernel_size: int, fill: float) -> torch.Tensor:
    """A view ``out[..., i, k] = v[..., i + k - r, ...]`` along ``dim`` (-1 or -2), ``fill`` outside."""
    r = kernel_size // 2
    pad = (r, r) if dim == -1 else (0, 0, r, r)
    return F.pad(v, pad, value=fill).unfold(dim, kernel_size, 1)


def _fold_1d(a: torch.Tensor, dim: int, kernel_size: int) -> torch.Tensor:
    """The adjoint of :func:`_window_1d`: ``out[..., j] = sum_k a[..., j - k + r, k]`` along ``dim``."""
    r = kernel_size // 2
    shape = list(a.shape[:-1])
    size = shape[dim]
    shape[dim] = size + 2 * r
    out = a.new_zeros(shape)
    for k in range(kernel_size):
        out.narrow(dim, k, size).add_(a[..., k])
    return out.narrow(dim, r, size)


class WindowKernel:
    """The Gibbs kernel ``exp(-psi C(d) - 1)`` of a symmetric window cost, with per-example ``psi``.

    Parameters
    ----------
    cost : torch.Tensor
        ``(k*k,)`` cost of each offset, row-major over ``(di, dj)``
        (:func:`wbench.attacks.sinkhorn.cost_kernel`), with ``C(0) = 0`` and ``C(d) = C(-d)``.
    separable : bool, optional
        ``None`` (default): the separable passes whenever ``C(d) = C(di, 0) + C(0, dj)`` (to
        ``1e-12`` relative in float64); ``False``: always the general ``k**2`` window; ``True``:
        the separable passes, or ``ValueError`` if the cost is not separable.
    """

    def __init__(self, cost: torch.Tensor, *, separable: bool | None = None):
        k = math.isqrt(cost.numel())
        if k * k != cost.numel() or k % 2 != 1:
            raise ValueError(f"cost must hold k*k values for an odd k, got {cost.numel()}")
        self.k, self.r = k, k // 2
        c = cost.detach().to(torch.float64).view(k, k)
        a, b = c[:, self.r], c[self.r, :]
        splits = bool(((a[:, None] + b[None, :] - c).abs() <= _SEPARABLE_RTOL * c.abs().max()).all())
        if separable and not splits:
            raise ValueError("the cost is not additively separable: C(di, dj) != C(di, 0) + C(0, dj)")
        self.separable = splits if separable is None else separable
        self.cost = cost
        self.a, self.b = a.to(cost), b.to(cost)

    # -- general: the k*k window of every pixel -------------------------------------------------

    def _terms(self, v: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
        log_k = -psi[:, None] * self.cost[None, :] - 1.0
        return window_columns(v, self.k, -math.inf) + log_k[:, None, :, None]

    # -- separable: a pass along each row (offsets dj), then along each column (offsets di) ------

    def _row_terms(self, v: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
        return _window_1d(v, -1, self.k, -math.inf) + (-psi.view(-1, 1, 1, 1, 1) * self.b)

    def _column_terms(self, t: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
        return _window_1d(t, -2, self.k, -math.inf) + (-psi.view(-1, 1, 1, 1, 1) * self.a - 1.0)

    def _row_pass(self, v: torch.Tensor, psi: torch.Tensor, moments: int):
        """Row log-sum-exp ``T`` and the normalised row weights ``e / s`` with their ``b``-moments."""
        t = self._row_terms(v, psi)
        m = _safe_max(t, -1)
        e = torch.exp(t - m)
        s = e.sum(-1)  # >= 1 where the window holds a finite term (its maximum contributes exp(0))
        lse = m.squeeze(-1) + torch.log(s)
        s1 = s.clamp(min=1.0)
        rho = [(e * self.b).sum(-1) / s1]
        if moments > 1:
            rho.append((e * (self.b * self.b)).sum(-1) / s1)
        return lse, e, s1, rho

    # -- the operations of the projected Sinkhorn iteration --------------------------------------

    def lse(self, v: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
        """``log sum_d K_psi(d) exp(v[x + d])`` per pixel of ``v`` (N, C, H, W); ``psi`` is (N,)."""
        if not self.separable:
            return torch.logsumexp(self._terms(v, psi), dim=2).view_as(v)
        t = torch.logsumexp(self._row_terms(v, psi), dim=-1)
        return torch.logsumexp(self._column_terms(t, psi), dim=-1)

    def moments(self, v: torch.Tensor, psi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``log sum_d K_psi(d) C(d)**m exp(v[x + d])`` for ``m = 0, 1, 2`` (``-inf`` where the sum is 0)."""
        if not self.separable:
            t = self._terms(v, psi)
            m = _safe_max(t, 2)
            e = torch.exp(t - m)
            c = self.cost[None, None, :, None]
            sums = (e.sum(2), (e * c).sum(2), (e * (c * c)).sum(2))
            return tuple((m.squeeze(2) + torch.log(s)).view_as(v) for s in sums)  # type: ignore[return-value]
        t, _, _, (rho1, rho2) = self._row_pass(v, psi, 2)
        tc = self._column_terms(t, psi)
        m = _safe_max(tc, -1)
        e = torch.exp(tc - m)
        a = self.a
        r1 = _window_1d(rho1, -2, self.k, 0.0)
        r2 = _window_1d(rho2, -2, self.k, 0.0)
        sums = (e.sum(-1), (e * (a + r1)).sum(-1), (e * (a * a + 2 * a * r1 + r2)).sum(-1))
        m = m.squeeze(-1)
        return m + torch.log(sums[0]), m + torch.log(sums[1]), m + torch.log(sums[2])

    def plan(
        self, log_x: torch.Tensor, v: torch.Tensor, psi: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The plan ``P[x, d] = X_x softmax_d(log K_psi(d) + v[x + d])`` (rows sum to ``X = exp(log_x)``).

        Returns its column marginal ``z[y] = sum_d P[y - d, d]`` (N, C, H, W) and its cost
        ``<P, C>`` (N,). Each row is normalised as a whole, so ``z`` carries ``X``'s mass per
        channel up to rounding, however large ``v`` is.
        """
        if not self.separable:
            rows = torch.exp(log_x.flatten(2).unsqueeze(2) + torch.log_softmax(self._terms(v, psi), dim=2))
            z = fold_columns(rows, tuple(log_x.shape), self.k)
            return z, (rows * self.cost[None, None, :, None]).flatten(1).sum(1)
        # P[x, (di, dj)] = A[x, di] * R[x + (di, 0), dj]: a column step, then a row step
        t, e, s, (rho1,) = self._row_pass(v, psi, 1)
        rows = e / s[..., None]  # R: each sums to 1 over dj (or is 0 for an empty window)
        tc = self._column_terms(t, psi)
        col = torch.exp(log_x[..., None] + torch.log_softmax(tc, dim=-1))  # A: sums to X over di
        mid = _fold_1d(col, -2, self.k)  # mass at each intermediate pixel x + (di, 0)
        z = _fold_1d(mid[..., None] * rows, -1, self.k)
        plan_cost = (col * self.a).flatten(1).sum(1) + (mid * rho1).flatten(1).sum(1)
        return z, plan_cost
