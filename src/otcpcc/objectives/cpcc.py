r"""The CPCC regulariser and the TestCPCC metric.

.. math:: \mathrm{CPCC} = \operatorname{corr}\big(t(i, j),\ \rho(i, j)\big)_{i < j}

the Pearson correlation, over all pairs of fine classes present in the batch, between the target
distance t (the tree's weighted path length between leaves, or any symmetric class-distance
matrix such as a cost matrix, see :mod:`otcpcc.objectives.target`) and the feature-space distance
ρ of :mod:`otcpcc.distances`. The training loss adds :math:`\lambda\,(1 - \mathrm{CPCC})`.

With fewer than two classes present, or zero variance in t or ρ, CPCC is undefined: the loss is
then 1.0 (zero correlation) with a zero gradient, never NaN.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import Tensor, nn

from ..distances import check_batch, check_options, grouped_distances, resolve
from ..distances.cost import saturate
from ..distributed.gather import all_gather_labels, all_gather_with_grad
from .target import constant_distance, target_matrix

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
    def forward(ctx, t, r, noise, unit=None):  # noqa: D102
        r_lo, r_hi = r.aminmax()
        t_lo, t_hi = t.aminmax()
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
        tc = t - t.mean()
        s_tt = torch.dot(tc, tc)
        defined = defined & (s_tt > 0)
        tc = (tc / torch.sqrt(s_tt).clamp_min_(torch.finfo(t.dtype).tiny)).to(r.dtype)  # t̃/√S_tt
        r = r / s_r
        rc = r - r.mean()
        s_rr = torch.dot(rc, rc)
        norm = torch.sqrt(s_rr)
        corr = torch.where(defined, torch.dot(tc, rc) / norm, 0)
        # s_r · dc/dr = a t̃/√S_tt − b r̃ (a = b = 0 where undefined)
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
        return None, g if ctx.unit is not None else saturate(g.div_(s_r)), None, None


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
                unit: Any = None) -> tuple[Tensor, Tensor]:
    """Pearson correlation of two [P] vectors (P >= 1) without a host sync: ``(corr, defined)``,
    scalar tensors; where undefined (see :func:`pearson`) ``corr`` is 0 with a zero gradient.

    Both vectors are divided by their largest magnitude before centring and squaring, so the
    value is the same at every scale of the float range (no overflow or underflow of the
    squares); the gradient w.r.t. ``r`` is the closed form of :class:`_Correlation`, finite at
    every scale (saturating at float's largest number where the true one is beyond it). ``unit``:
    the grad_fn of :class:`_GradUnit` on the features r was computed from (CPCC's internal use:
    the division by r's scale then happens at the features). O(P).
    """
    t = t.detach()
    return _Correlation.apply(t if t.is_floating_point() else t.double(), r, noise, unit)


def pearson(t: Tensor, r: Tensor, noise: Tensor | float = 0.0) -> Tensor | None:
    """Pearson correlation of two [P] vectors; None where undefined.

    Undefined: P < 2, t constant, or ``r`` spread (max − min) at most ``noise`` (the rounding
    level of the inputs, :func:`rounding_spread`). One host sync (the decision); O(P).
    """
    if r.numel() < 2:
        return None
    corr, defined = correlation(t, r, noise)
    return corr if bool(defined) else None


def _check_labels(labels: Tensor, num_leaves: int, of: str = "the CPCC target",
                  fix: str = "restrict the tree (or matrix) to the dataset") -> None:
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_leaves):
        bad = labels[(labels < 0) | (labels >= num_leaves)][0]
        raise ValueError(f"label {int(bad)} is not a leaf id of {of} (ids are "
                         f"0..{num_leaves - 1}); map labels with tree.index(name) or {fix}")


def check_logits_labels(logits: Tensor, labels: Tensor, num_classes: int,
                        loss: str = "the task loss") -> Tensor:
    """Validate a task-loss batch: logits [N, K] floating point, labels [N] integer leaf ids on
    the logits' device. Returns the labels as int64; one-line ValueError otherwise, naming
    ``loss`` (e.g. ``"HXELoss"``) where a label is out of range."""
    if not isinstance(logits, Tensor) or not isinstance(labels, Tensor):
        raise ValueError(f"logits and labels must be torch tensors, got {type(logits).__name__} and "
                         f"{type(labels).__name__}")
    if logits.ndim != 2 or logits.shape[1] != num_classes:
        raise ValueError(f"logits must be [N, {num_classes}] (one column per leaf), "
                         f"got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be floating point, got {logits.dtype}; pass the model's raw scores")
    if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"labels must be [N] with N = {logits.shape[0]} (one per row of logits), "
                         f"got shape {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class ids, got {labels.dtype}; "
                         "convert them with labels.long()")
    if labels.device != logits.device:
        raise ValueError(f"logits on {logits.device} but labels on {labels.device}; "
                         "move both to one device")
    labels = labels.long()
    _check_labels(labels, num_classes, f"the tree of {loss}", f"build {loss} on the dataset's tree")
    return labels


def real_option(value: Any, name: str, example: str) -> float:
    """``value`` as a float where it is a real number (an int, a float, a numpy scalar) and not a
    bool: a one-line TypeError otherwise (``float("0.1")`` would accept a string, ``True`` read
    as 1, ``None`` fail with float()'s own message). The range is the caller's to check."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__}); "
                        f"pass e.g. {name}={example}")
    return float(value)


def finished_task_loss(loss: Tensor, logits: Tensor, labels: Tensor, name: str) -> Tensor:
    """``loss`` (a task loss's batch mean), checked: a one-line ValueError where it is not finite.

    As CPCCLoss, the cheap output is checked and the [N, K] input is scanned only when it is bad
    (to name the rows with NaN/inf, :func:`otcpcc.distances.check_batch`): one host sync for
    a scalar, no O(N K) scan per step."""
    if bool(torch.isfinite(loss.detach())):
        return loss
    check_batch(logits, labels, what="logits")
    big = float(logits.detach().abs().max())
    raise ValueError(f"{name} is not finite although the logits are (largest |logit| {big:.3g} "
                     f"overflows {logits.dtype}); scale the logits down (e.g. a lower learning rate)")


def empty_task_loss(logits: Tensor) -> Tensor:
    """A task loss on an empty batch: 0.0 with a zero gradient (the sum over no samples), not
    the NaN of a mean over none (``F.cross_entropy``'s mean reduction gives NaN), so a summed
    objective (task loss + λ·CPCC, whose empty value is 1.0) stays finite."""
    return logits.sum() * 0.0


def _cpcc(features: Tensor, labels: Tensor, tree_dist: Tensor, distance: str,
          options: dict) -> tuple[Tensor, Tensor] | None:
    """(corr, defined) as :func:`correlation`, or None with fewer than two classes. Two host
    syncs on CUDA for the closed-form distances (:func:`otcpcc.distances.grouped_distances`):
    the label range is read with the class sizes."""
    check_batch(features, labels, finite=False)  # types and shapes first (the NaN scan comes later)
    if features.requires_grad:  # the gradient's 1/scale is applied here, last (see _Correlation)
        features = _GradUnit.apply(features)
    k = tree_dist.shape[0]
    on_labels = None
    if labels.ndim == 1 and not labels.dtype.is_floating_point and labels.dtype != torch.bool:
        labels = labels.long()  # any integer dtype; the leaf-id gather needs int64

        def on_labels(lo: int, hi: int) -> None:
            if lo < 0 or hi >= k:
                _check_labels(labels, k)
    groups, rho, magnitude = grouped_distances(features, labels, distance, on_labels=on_labels, **options)
    if groups.num_classes < 2:
        return None
    if tree_dist.device != rho.device:
        tree_dist = tree_dist.to(rho.device)
    t = tree_dist[groups.classes.index_select(0, groups.pair_i),
                  groups.classes.index_select(0, groups.pair_j)]
    return correlation(t, rho, rounding_spread(magnitude, features.shape[1], rho.dtype), features.grad_fn
                       if isinstance(features.grad_fn, _GradUnit._backward_cls) else None)


class CPCCLoss(nn.Module):
    r"""``1 − CPCC(batch)`` for features [N, d] and leaf-id labels [N]; a scalar tensor.

    Args:
        target: a :class:`~otcpcc.LabelTree` (its [K, K] distance matrix is computed once) or a
            symmetric [K, K] class-distance matrix (tensor / array: finite, >= 0, zero diagonal),
            e.g. a cost matrix; label ids index its rows.
        distance: ``"l2"``, ``"emd"``, ``"sinkhorn"``/``"sk"``, ``"swd"``, ``"fastft"``/``"fft"``.
        gather: compute CPCC on the batch gathered from all DDP ranks (with gradient, see
            :mod:`otcpcc.gather`); a no-op outside ``torch.distributed``.
        **options: options of the distance (e.g. ``reg``, ``n_projections``, ``weights``).

    Example::

        crit = CPCCLoss(tree, distance="fastft")
        features, logits = model(x)
        loss = F.cross_entropy(logits, y) + lam * crit(features, y)
    """

    def __init__(self, target: Any, distance: str = "fastft", gather: bool = False, **options: Any):
        super().__init__()
        self.distance = resolve(distance)
        check_options(self.distance, options)
        self.gather = gather
        self.options = options
        self.register_buffer("tree_dist", target_matrix(target), persistent=False)
        same = constant_distance(self.tree_dist.numpy())  # matrices were refused above
        if same is not None:
            raise ValueError(
                "the label tree is flat: every two classes are equally far apart (all distances "
                f"{same:g}), so CPCC is undefined and the regulariser would do nothing; "
                "give a tree with at least one level between the root and the classes (e.g. "
                "--tree FILE), or train without it (--distance none)")

    def extra_repr(self) -> str:
        opts = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return f"distance={self.distance!r}, gather={self.gather}{opts}"

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:  # noqa: D102
        check_batch(features, labels, finite=False)
        if self.gather:
            features, labels = all_gather_with_grad(features), all_gather_labels(labels)
        if self.tree_dist.device != features.device:  # moved once, not copied every call
            self.tree_dist = self.tree_dist.to(features.device)
        found = _cpcc(features, labels, self.tree_dist, self.distance, self.options)
        if found is None:
            return features.sum() * 0 + 1.0
        return 1.0 - found[0]  # 1.0 with a zero gradient where CPCC is undefined


@torch.no_grad()
def cpcc(features: Tensor, labels: Tensor, target: Any, distance: str = "l2", **options: Any) -> float:
    """TestCPCC: the CPCC of ``features`` [N, d] under ``distance``, a float in [-1, 1], against
    ``target`` (a ``LabelTree`` or a symmetric [K, K] class-distance matrix, as in CPCCLoss).

    Returns 0.0 where CPCC is undefined (fewer than two classes, zero variance), matching the
    loss's value of 1.0 there.
    """
    found = _cpcc(features, labels, target_matrix(target), resolve(distance), options)
    return 0.0 if found is None else float(found[0])
