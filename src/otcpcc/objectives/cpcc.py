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

import numbers
from typing import Any

import torch
from torch import Tensor, nn

from ..distances import check_batch, check_options, grouped_distances, resolve
from ..distributed.gather import all_gather_labels, all_gather_with_grad
from .correlation import _GradUnit, correlation, rounding_spread
from .graphed import FixedCPCC
from .target import constant_distance, target_matrix, too_few_classes


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
        cuda_graph: compute with fixed shapes over all K classes and no host sync, and on CUDA
            replay one captured CUDA graph per input shape (:mod:`otcpcc.objectives.graphed`:
            ``l2``, ``swd``, ``fastft``; bad input gives a NaN loss instead of an error).
        **options: options of the distance (e.g. ``reg``, ``n_projections``, ``weights``).

    Example::

        crit = CPCCLoss(tree, distance="fastft")
        features, logits = model(x)
        loss = F.cross_entropy(logits, y) + lam * crit(features, y)
    """

    def __init__(self, target: Any, distance: str = "fastft", gather: bool = False,
                 cuda_graph: bool = False, **options: Any):
        super().__init__()
        self.distance = resolve(distance)
        check_options(self.distance, options)
        for name, flag in (("gather", gather), ("cuda_graph", cuda_graph)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be True or False, got {flag!r}")
        self.gather = gather
        self.cuda_graph = cuda_graph
        self.options = options
        self.register_buffer("tree_dist", target_matrix(target), persistent=False)
        self._fixed = FixedCPCC(self.distance, options, self.tree_dist.shape[0]) if cuda_graph else None
        if self.tree_dist.shape[0] < 3:
            raise ValueError(too_few_classes(self.tree_dist.shape[0]))
        same = constant_distance(self.tree_dist.numpy())  # matrices were refused above
        if same is not None:
            raise ValueError(
                "the label tree is flat: every two classes are equally far apart (all distances "
                f"{same:g}), so CPCC is undefined and the regulariser would do nothing; "
                "give a tree with at least one level between the root and the classes (e.g. "
                "--tree FILE), or train without it (--distance none)")

    def _apply(self, fn: Any, recurse: bool = True) -> CPCCLoss:
        """``.to()``, ``.cuda()``, ``.half()``, ``model.half()`` with this loss inside: the target
        follows the device only and stays float64 (float16 turns tree distances over 65504 into
        inf, and rounds the rest: a silently different CPCC)."""
        target = self.tree_dist
        super()._apply(fn, recurse)
        self.tree_dist = target.to(self.tree_dist.device)
        return self

    def extra_repr(self) -> str:
        opts = "".join(f", {k}={v!r}" for k, v in self.options.items())
        graph = ", cuda_graph=True" if self.cuda_graph else ""
        return f"distance={self.distance!r}, gather={self.gather}{graph}{opts}"

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:  # noqa: D102
        check_batch(features, labels, finite=False)
        if self.gather:
            features, labels = all_gather_with_grad(features), all_gather_labels(labels)
        if self.tree_dist.device != features.device:  # moved once, not copied every call
            self.tree_dist = self.tree_dist.to(features.device)
        if self._fixed is not None and features.shape[0] >= 2:
            return self._fixed(features, labels, self.tree_dist)
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
