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

Both subtract the window maximum before ``exp`` (a log-sum-exp), so nothing overflows for
log-potentials of any size; ``-inf`` entries (pixels without mass) are allowed. The separable
passes work on shifted slices (no padding, no reductions over a size-k axis) and hold every
exponent at or above ``log(tiny) + 1``, so that no ``exp`` underflows (an underflowing or infinite
argument takes a slow path on CPUs, 4-20x): a sum changes by less than ``k * tiny`` relative to its
largest term, and a moment whose exact value lies below that scale (only the centre of a window,
where ``C = 0``, carries weight) comes back at that scale instead of ``-inf``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_SEPARABLE_RTOL = 1e-12
_EMPTY = -1e37  # stands for -inf inside the separable passes (float32's max is 3.4e38)


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


def _span(length: int, d: int) -> tuple[int, int]:
    """The positions ``p`` with ``0 <= p + d < length``: ``(start, count)``."""
    return max(0, -d), length - abs(d)


class _Pass:
    """A 1-D window log-sum-exp along ``dim``: ``log sum_j exp(logw_j + v[p + d_j])``, ``d_j = j - r``.

    ``v`` must be finite (``-inf`` entries are clamped to :data:`_EMPTY` beforehand). The window
    maximum ``m`` is subtracted and every exponent is held at or above ``log(tiny) + 1``: terms
    that far below the maximum change the sum (which is at least 1) by less than ``k * tiny``
    relative, and no ``exp`` ever underflows (an underflowing ``exp`` is many times slower on
    CPUs). Offsets that leave the image are sliced off, never padded.
    Keeps ``m``, the sum ``s`` and the terms ``e_j = exp(... - m)`` (each on its span).
    """

    def __init__(self, v: torch.Tensor, dim: int, logw: list[torch.Tensor]):
        k = len(logw)
        r = k // 2
        floor = math.log(torch.finfo(v.dtype).tiny) + 1.0
        length = v.shape[dim]
        self.dim, self.length, self.r = dim, length, r
        terms = []
        for j in range(k):
            lo, n = _span(length, j - r)
            terms.append(v.narrow(dim, lo + j - r, n) + logw[j])
        m = terms[r].clone()
        for j, t in enumerate(terms):
            if j != r:
                lo, n = _span(length, j - r)
                part = m.narrow(dim, lo, n)
                torch.maximum(part, t, out=part)
        s = torch.zeros_like(m)
        for j, t in enumerate(terms):
            lo, n = _span(length, j - r)
            t.sub_(m.narrow(dim, lo, n)).clamp_(min=floor).exp_()
            s.narrow(dim, lo, n).add_(t)
        self.m, self.s, self.e = m, s, terms

    def spans(self):
        """``(j, start, count, e_j)`` for every offset."""
        for j, e in enumerate(self.e):
            lo, n = _span(self.length, j - self.r)
            yield j, lo, n, e

    def weighted(self, w: list[float]) -> torch.Tensor:
        """``sum_j w_j e_j`` per position."""
        out = torch.zeros_like(self.s)
        for j, lo, n, e in self.spans():
            if w[j] != 0:
                out.narrow(self.dim, lo, n).add_(e, alpha=w[j])
        return out

    def lse(self) -> torch.Tensor:
        return self.m + torch.log(self.s)


def _spread(mass_j, dim: int, length: int, r: int, shape) -> torch.Tensor:
    """``out[p + d_j] += mass_j[p]``: each row's mass moved by its offset (the adjoint of a pass)."""
    out = mass_j[r].new_zeros(shape)
    for j, q in enumerate(mass_j):
        lo, n = _span(length, j - r)
        out.narrow(dim, lo + j - r, n).add_(q)
    return out


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
        self.a_list, self.b_list = a.tolist(), b.tolist()

    # -- general: the k*k window of every pixel -------------------------------------------------

    def _terms(self, v: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
        log_k = -psi[:, None] * self.cost[None, :] - 1.0
        return window_columns(v, self.k, -math.inf) + log_k[:, None, :, None]

    # -- separable: a pass along each row (offsets dj), then along each column (offsets di) ------

    def _row_pass(self, v: torch.Tensor, psi: torch.Tensor) -> _Pass:
        v = v.clamp(min=_EMPTY)
        return _Pass(v, -1, [-psi.view(-1, 1, 1, 1) * b for b in self.b_list])

    def _column_pass(self, t: torch.Tensor, psi: torch.Tensor) -> _Pass:
        return _Pass(t, -2, [-psi.view(-1, 1, 1, 1) * a - 1.0 for a in self.a_list])

    @staticmethod
    def _empty_to_inf(lse: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """``-inf`` where the window held no finite term (its maximum is near :data:`_EMPTY`)."""
        return torch.where(m < _EMPTY / 2, -math.inf, lse)

    # -- the operations of the projected Sinkhorn iteration --------------------------------------

    def lse(self, v: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
        """``log sum_d K_psi(d) exp(v[x + d])`` per pixel of ``v`` (N, C, H, W); ``psi`` is (N,)."""
        if not self.separable:
            return torch.logsumexp(self._terms(v, psi), dim=2).view_as(v)
        col = self._column_pass(self._row_pass(v, psi).lse(), psi)
        return self._empty_to_inf(col.lse(), col.m)

    def moments(self, v: torch.Tensor, psi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``log sum_d K_psi(d) C(d)**m exp(v[x + d])`` for ``m = 0, 1, 2`` (module docstring: accuracy)."""
        if not self.separable:
            t = self._terms(v, psi)
            m = _safe_max(t, 2)
            e = torch.exp(t - m)
            c = self.cost[None, None, :, None]
            sums = (e.sum(2), (e * c).sum(2), (e * (c * c)).sum(2))
            return tuple((m.squeeze(2) + torch.log(s)).view_as(v) for s in sums)  # type: ignore[return-value]
        row = self._row_pass(v, psi)
        rho1 = row.weighted(self.b_list) / row.s  # the b-weighted means of each row window
        rho2 = row.weighted([b * b for b in self.b_list]) / row.s
        col = self._column_pass(row.lse(), psi)
        u1, u2 = col.weighted(self.a_list), col.weighted([a * a for a in self.a_list])
        for j, lo, n, e in col.spans():  # C = a + b and C**2 = a**2 + 2 a b + b**2
            src = lo + j - self.r
            r1, r2 = rho1.narrow(-2, src, n), rho2.narrow(-2, src, n)
            u1.narrow(-2, lo, n).addcmul_(e, r1)
            u2.narrow(-2, lo, n).addcmul_(e, r1, value=2 * self.a_list[j]).addcmul_(e, r2)
        return tuple(  # type: ignore[return-value]
            self._empty_to_inf(col.m + torch.log(u), col.m) for u in (col.s, u1, u2)
        )

    def plan(self, x: torch.Tensor, v: torch.Tensor, psi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The plan ``P[x, d] = X_x softmax_d(log K_psi(d) + v[x + d])`` (rows sum to ``X``).

        Returns its column marginal ``z[y] = sum_d P[y - d, d]`` (N, C, H, W) and its cost
        ``<P, C>`` (N,). Each row is normalised as a whole, so ``z`` carries ``X``'s mass per
        channel up to rounding, however large ``v`` is.
        """
        if not self.separable:
            rows = x.flatten(2).unsqueeze(2) * torch.softmax(self._terms(v, psi), dim=2)
            z = fold_columns(rows, tuple(x.shape), self.k)
            return z, (rows * self.cost[None, None, :, None]).flatten(1).sum(1)
        # P[x, (di, dj)] = A[x, di] * R[x + (di, 0), dj]: a column step, then a row step
        row = self._row_pass(v, psi)
        col = self._column_pass(row.lse(), psi)
        share = x / col.s  # A_i = x e_i / sum_i e_i: each row of the plan carries x
        shape, h, w = tuple(x.shape), x.shape[-2], x.shape[-1]
        parts, spent = [], 0.0
        for j, lo, n, e in col.spans():
            a_j = e * share.narrow(-2, lo, n)
            parts.append(a_j)
            spent = spent + self.a_list[j] * a_j.flatten(1).sum(1)
        mid = _spread(parts, -2, h, self.r, shape)  # mass at each intermediate pixel x + (di, 0)
        per = mid / row.s
        moved = [e * per.narrow(-1, lo, n) for _, lo, n, e in row.spans()]
        z = _spread(moved, -1, w, self.r, shape)
        plan_cost = spent + (row.weighted(self.b_list) * per).flatten(1).sum(1)
        return z, plan_cost
