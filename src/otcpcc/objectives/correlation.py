r"""Pearson correlation for CPCC: value, definedness and closed-form gradient, without a host sync.

:func:`correlation` is the CPCC of a target vector t and a distance vector ρ over pairs (optionally
over a mask of them); :func:`pearson` the same with the definedness read on the host.
:func:`rounding_spread` bounds the spread that rounding alone gives distances of features of a
given magnitude: below it ρ has zero variance, and CPCC is undefined.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..distances.cost import saturate

ZERO_SPREAD = 8.0  # rho spread within ZERO_SPREAD · eps · (d·max|x - mean| + √d·max|x|): zero variance


def rounding_spread(magnitude: Tensor, d: int, dtype: torch.dtype) -> Tensor:
    r"""The spread of class distances that rounding alone can produce from features of ``d``
    dimensions whose ``magnitude`` is :math:`(\max|x|, \max|x - \bar x|)` (a [2] tensor, from
    :func:`otcpcc.distances.grouped_distances`): a float64 scalar tensor (no host sync).

    Two sources, both bounded here:

    * the computation: every distance is computed from the centred batch, from d-term sums over
      entries bounded by :math:`c = \max|x - \bar x|`; its rounding error is about
      :math:`d\,\varepsilon\,c` (a random walk of d rounding errors on distances up to
      :math:`2\sqrt d\,c`);
    * the input itself: each entry carries a rounding of :math:`\varepsilon \max|x|`, so rows
      that differ only by it (the same feature up to an ulp) are :math:`\sqrt d\,\varepsilon
      \max|x|` apart, however large a common offset is.

    Class distances that all agree to within ``ZERO_SPREAD``·ε·(d·c + √d·max|x|) are equal up to
    rounding: the variance is zero. Both terms scale with the features, so it is the same decision
    at every feature scale; a common offset enters only through the input term (float32 features
    1e6 + structure of size 3 keep their CPCC). O(1).
    """
    eps = ZERO_SPREAD * torch.finfo(dtype).eps
    return magnitude[1].mul(d * eps).add_(magnitude[0], alpha=math.sqrt(d) * eps)


class _Correlation(torch.autograd.Function):
    r"""Pearson correlation of t and r ([P] each) and whether it is defined, with the closed-form
    gradient w.r.t. r (one fused step instead of autograd through every elementwise operation).

    With :math:`\tilde t = t/s_t - \overline{t/s_t}` and :math:`\tilde r = r/s_r - \overline{r/s_r}`
    (:math:`s` the largest magnitude, so the squares neither overflow nor underflow),
    :math:`S_{tt} = \lVert\tilde t\rVert^2`, :math:`S_{rr} = \lVert\tilde r\rVert^2`:

    .. math:: c = \frac{\langle\tilde t, \tilde r\rangle}{\sqrt{S_{tt} S_{rr}}}, \qquad
              \frac{\partial c}{\partial r} = \frac{1}{s_r}\Big(\frac{\tilde t}{\sqrt{S_{tt}
              S_{rr}}} - c\,\frac{\tilde r}{S_{rr}}\Big)

    (the centring drops out of the gradient: both centred vectors sum to 0; :math:`s_r` is a
    detached scale, c does not depend on it). Where undefined, c = 0 with a zero gradient.

    The bracket is O(1) at every scale; the factor :math:`1/s_r` comes last. Given a
    :class:`_GradUnit` ``unit`` (as CPCC passes), backward returns the gradient times
    :math:`s_r` and leaves the division to ``unit`` at the features, after the distances'
    backward: tiny features (float32 ``x·1e-38``) then get their gradient of order 1e37 exactly,
    where :math:`1/s_r` alone, or a distance backward fed with it, would overflow to inf/NaN.
    """

    @staticmethod
    def forward(ctx, t, r, noise, unit=None, mask=None):  # noqa: D102
        if mask is None:
            r_lo, r_hi = r.aminmax()
            t_lo, t_hi = t.aminmax()
            count = None
        else:  # the entries of mask only: the others are left out of every sum below
            r_lo, r_hi = torch.where(mask, r, math.inf).amin(), torch.where(mask, r, -math.inf).amax()
            t_lo, t_hi = torch.where(mask, t, math.inf).amin(), torch.where(mask, t, -math.inf).amax()
            count = mask.sum()
        defined = torch.gt(r_hi - r_lo, noise) & (t_hi > t_lo)  # (compared in float64)
        if r.numel() < 2:
            defined = torch.zeros_like(defined)
        # largest magnitudes, at least the smallest normal number: no division by 0 (an all-zero
        # vector stays 0); where undefined the results below are replaced, so no inf or NaN
        # reaches the value or the gradient. t is scaled, centred and normalised to a unit
        # vector in its own dtype (float64) before the cast: a target of 1e300 is not inf in
        # float32, and one whose distances differ only beyond float32's precision (1 + 1e-12·k)
        # keeps its variance (centring after the cast would leave 0/0 = NaN).
        s_r = torch.maximum(r_hi, -r_lo).clamp_min_(torch.finfo(r.dtype).tiny)
        t_max = torch.maximum(t_hi, -t_lo).clamp_min_(torch.finfo(t.dtype).tiny)
        t = t / t_max
        r = r / s_r
        if count is None:
            tc = t - t.mean()
            rc = r - r.mean()
        else:
            size = count.clamp_min(1)
            t = torch.where(mask, t, 0)
            r = torch.where(mask, r, 0)
            tc = torch.where(mask, t - t.sum() / size, 0)
            rc = torch.where(mask, r - r.sum() / size, 0)
        s_tt = torch.dot(tc, tc)
        defined = defined & (s_tt > 0)
        tc = (tc / torch.sqrt(s_tt).clamp_min_(torch.finfo(t.dtype).tiny)).to(r.dtype)  # t̃/√S_tt
        s_rr = torch.dot(rc, rc)
        norm = torch.sqrt(s_rr)
        corr = torch.where(defined, torch.dot(tc, rc) / norm, 0)
        # s_r · dc/dr = a t̃/√S_tt − b r̃ (a = b = 0 where undefined; t̃ = r̃ = 0 off the mask)
        a = torch.where(defined, 1 / norm, 0)
        b = torch.where(defined, corr / s_rr, 0)
        ctx.save_for_backward(tc, rc, a, b, s_r)
        ctx.unit = unit
        if unit is not None:
            unit.scale = s_r
        ctx.mark_non_differentiable(defined)
        return corr, defined

    @staticmethod
    def backward(ctx, grad, _):  # noqa: D102
        tc, rc, a, b, s_r = ctx.saved_tensors
        g = tc * (a * grad) - rc * (b * grad)  # s_r · dc/dr · grad
        return None, g if ctx.unit is not None else saturate(g.div_(s_r)), None, None, None


class _GradUnit(torch.autograd.Function):
    """Identity on the features; backward divides the gradient by ``scale`` (set by
    :class:`_Correlation`'s forward: the CPCC gradient arrives in units of :math:`1/s_r`),
    saturating at float's largest number where the true gradient is beyond the float range
    (:func:`otcpcc.distances.cost.saturate`)."""

    @staticmethod
    def forward(ctx, x):  # noqa: D102
        ctx.scale = None  # the output's grad_fn is this ctx: _Correlation writes the scale here
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        if ctx.scale is None:
            return grad
        g = grad.to(torch.promote_types(grad.dtype, ctx.scale.dtype)) / ctx.scale
        return saturate(g, grad.dtype).to(grad.dtype)


def correlation(t: Tensor, r: Tensor, noise: Tensor | float = 0.0,
                unit: Any = None, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Pearson correlation of two [P] vectors (P >= 1) without a host sync: ``(corr, defined)``,
    scalar tensors; where undefined (see :func:`pearson`) ``corr`` is 0 with a zero gradient.

    Both vectors are divided by their largest magnitude before centring and squaring, so the
    value is the same at every scale of the float range (no overflow or underflow of the
    squares); the gradient w.r.t. ``r`` is the closed form of :class:`_Correlation`, finite at
    every scale (saturating at float's largest number where the true one is beyond it). ``unit``:
    the grad_fn of :class:`_GradUnit` on the features r was computed from (CPCC's internal use:
    the division by r's scale then happens at the features). ``mask``: a [P] bool tensor, the
    correlation of the masked entries only (the others may hold anything finite), still P wide:
    fixed shapes for :mod:`otcpcc.objectives.graphed`. O(P).
    """
    t = t.detach()
    return _Correlation.apply(t if t.is_floating_point() else t.double(), r, noise, unit, mask)


def pearson(t: Tensor, r: Tensor, noise: Tensor | float = 0.0) -> Tensor | None:
    """Pearson correlation of two [P] vectors; None where undefined.

    Undefined: P < 2, t constant, or ``r`` spread (max − min) at most ``noise`` (the rounding
    level of the inputs, :func:`rounding_spread`). One host sync (the decision); O(P).
    """
    if r.numel() < 2:
        return None
    corr, defined = correlation(t, r, noise)
    return corr if bool(defined) else None
