"""Class-to-class distances between class-conditional feature distributions, all pairs at once.

``class_distances(features, labels, distance, **options)`` groups the batch by class, enumerates
every pair of present classes, solves all plans as tensors (no loop over pairs, but for the
exact LP) and evaluates all costs with one gather. The definitions are in the table below (and
in README's Distances section).

=============  ===========================================  ====================================
name           ρ(A, B)                                      options
=============  ===========================================  ====================================
``l2``         ‖mean_A − mean_B‖₂                           —
``emd``        exact OT cost, Euclidean ground cost          ``weights``
``sinkhorn``   ⟨M, P^ε⟩ of the entropic plan (alias ``sk``)  ``reg`` (10), ``max_iter``, ``tol``
``swd``        sliced Wasserstein-p                          ``n_projections`` (10), ``p`` (2),
                                                             ``projections`` [d, L], ``seed``
``fastft``     north-west-corner FlowTree (alias ``fft``)    ``weights``, ``order`` (``batch``:
                                                             published; ``sorted``: invariant)
=============  ===========================================  ====================================
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .cost import centred, deferred_recompute, max_abs, overflow_error
from .emd import emd
from .fastft import ORDERS, fastft
from .groups import ClassGroups, group_and_read, group_by_class
from .l2 import l2
from .sinkhorn import sinkhorn
from .swd import random_projections, swd, zero_directions
from .weights import WEIGHTINGS

DISTANCES: dict[str, Callable[..., Tensor]] = {
    "l2": l2,
    "emd": emd,
    "sinkhorn": sinkhorn,
    "swd": swd,
    "fastft": fastft,
}
ALIASES = {"sk": "sinkhorn", "fft": "fastft"}


def resolve(name: str) -> str:
    """Canonical distance name for a name or alias; a clear error for anything else."""
    key = ALIASES.get(name, name)
    if key not in DISTANCES:
        known = sorted(DISTANCES) + sorted(ALIASES)
        raise ValueError(f"unknown distance {name!r}; choose one of: {', '.join(known)}")
    return key


def _option_names(fn: Callable[..., Tensor]) -> tuple[str, ...]:
    return tuple(inspect.signature(fn).parameters)[2:]  # after (x, groups)


OPTIONS = {name: _option_names(fn) for name, fn in DISTANCES.items()}
MAX_PROJECTIONS = 100_000  # swd directions (the default is 10)
_NON_FINITE_PROJECTIONS = ("swd option projections has NaN or inf entries (in {dtype}); give finite "
                           "directions, e.g. unit columns")


def check_options(distance: str, options: dict[str, Any]) -> None:
    """One-line ValueError for an option a distance does not take or a value it cannot use."""
    name = resolve(distance)
    for key, value in options.items():
        if key not in OPTIONS[name]:
            allowed = ", ".join(OPTIONS[name]) or "none"
            raise ValueError(f"distance {name!r} has no option {key!r} (its options: {allowed})")
        if key == "weights" and value not in WEIGHTINGS:
            raise ValueError(f"unknown sample weighting {value!r}; use one of {', '.join(WEIGHTINGS)}")
        if key == "order" and value not in ORDERS:
            raise ValueError(f"unknown fastft order {value!r}; use one of {', '.join(ORDERS)}")
        positive_int = key in ("n_projections", "max_iter")
        if positive_int and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1):
            raise ValueError(f"{name} option {key} must be an integer >= 1, got {value!r}")
        if key in ("reg", "tol", "p") and (  # a bool is an int to Python, not a number here
                isinstance(value, bool) or not isinstance(value, numbers.Real)
                or not (math.isfinite(value) and value > 0)):
            raise ValueError(f"{name} option {key} must be a finite number > 0, got {value!r}")
        if key == "p" and value < 1:
            raise ValueError(f"swd option p must be >= 1, got {value!r}")
        if key == "n_projections" and value > MAX_PROJECTIONS:
            raise ValueError(
                f"swd option n_projections={value} is above {MAX_PROJECTIONS}: time and memory "
                "grow as N·L (4·N·L bytes for the projections alone) while the estimate's error "
                f"falls only as 1/sqrt(L) (about {MAX_PROJECTIONS ** -0.5:.1%} at the cap)")
        if key == "projections" and value is not None and not (
                isinstance(value, Tensor) and value.ndim == 2 and value.is_floating_point()):
            what = (f"a {value.dtype} tensor of shape {tuple(value.shape)}"
                    if isinstance(value, Tensor) else f"a {type(value).__name__}")
            raise ValueError(f"swd option projections must be a floating-point torch tensor "
                             f"[d, L], got {what}; convert it with torch.as_tensor(..., dtype=torch.float32)")
        if key == "projections" and value is not None and value.shape[1] == 0:
            raise ValueError(f"swd option projections has shape {tuple(value.shape)}: no directions; "
                             "give at least one column (or leave it out for n_projections random ones)")
        if key == "projections" and value is not None and value.device.type == "cpu":  # no sync
            if not bool(torch.isfinite(value).all()):
                raise ValueError(_NON_FINITE_PROJECTIONS.format(dtype=value.dtype))
            error = zero_directions(value)
            if error is not None:
                raise error
        if key == "seed" and value is not None and (
                isinstance(value, bool) or not isinstance(value, numbers.Integral)
                or not -2**63 <= value < 2**64):
            raise ValueError(f"swd option seed must be an integer in [-2**63, 2**64) or None, got {value!r}")


def check_batch(features: Tensor, labels: Tensor, finite: bool = True, what: str = "features") -> None:
    """Validate a (features [N, d] float, labels [N] integer) batch; one-line ValueErrors.

    ``finite=False`` skips the O(N d) scan for NaN/inf (callers then check their output).
    ``what``: the name of the [N, d] tensor in the messages (``"logits"`` for task losses).
    """
    if not isinstance(features, Tensor) or not isinstance(labels, Tensor):
        raise ValueError(f"features and labels must be torch tensors, got {type(features).__name__} and "
                         f"{type(labels).__name__}; convert them with torch.as_tensor")
    if features.ndim != 2:
        raise ValueError(f"features must be [N, d], got shape {tuple(features.shape)}; "
                         "flatten or pool them first")
    if features.shape[1] == 0:
        raise ValueError(f"features have shape {tuple(features.shape)}: 0 dimensions; "
                         "each sample needs at least one feature")
    if not features.is_floating_point():
        raise ValueError(f"features must be floating point, got {features.dtype}")
    if labels.ndim != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be a 1-D integer tensor, got {labels.dtype} "
                         f"of shape {tuple(labels.shape)}")
    if labels.shape[0] != features.shape[0]:
        raise ValueError(f"features has {features.shape[0]} rows but labels has "
                         f"{labels.shape[0]}; they must match")
    if labels.device != features.device:
        raise ValueError(f"features on {features.device} but labels on {labels.device}; "
                         "move both to one device")
    if finite and not bool(torch.isfinite(features.detach()).all()):
        bad = int((~torch.isfinite(features.detach())).any(1).sum())
        raise ValueError(f"{what} contain NaN or inf in {bad} of {features.shape[0]} rows; "
                         "check the model (e.g. lower the learning rate or disable AMP)")


def grouped_distances(
    features: Tensor,
    labels: Tensor,
    distance: str = "l2",
    *,
    on_labels: Callable[[int, int], None] | None = None,
    **options: Any,
) -> tuple[ClassGroups, Tensor, Tensor]:
    """Validated batch -> (groups, rho [pairs], magnitude); the shared core of class_distances
    and CPCC. ``magnitude``: a detached [2] tensor (max|x|, max|x − x̄|) of the features as the
    distances see them (cost dtype; the second after removing the batch mean), zeros with fewer
    than two classes: the scale of their rounding (:func:`otcpcc.objectives.correlation.rounding_spread`).

    ``on_labels(lo, hi)``: the caller's check of the smallest and largest label (may raise),
    called with the class sizes' transfer, before any distance. On CUDA the whole call syncs twice
    for the closed-form distances: the class sizes and one read after the distances (finite
    values; near-zero recomputes within their cap, see :func:`.cost.deferred_recompute`).
    """
    name = resolve(distance)
    check_options(name, options)
    # Solvers that feed an LP or iterations need finite input up front (read with the class
    # sizes); for the closed-form ones a NaN/inf shows in the [pairs] output, far cheaper to scan.
    # Every output is scanned: distances can overflow float32 although the features are finite.
    upfront = name in ("emd", "sinkhorn")
    check_batch(features, labels, finite=False)
    labels = labels.long()  # any integer dtype (uint8, int16, ...) indexes as int64
    flags = [torch.isfinite(features.detach()).all()] if upfront else []
    groups, (lo, hi, *finite) = group_and_read(labels, flags)
    if on_labels is not None and labels.numel():
        on_labels(lo, hi)
    if upfront and not finite[0]:
        check_batch(features, labels)  # names the bad rows
    if groups.num_classes < 2:
        check_batch(features, labels)
        return groups, features.new_zeros(0), features.new_zeros(2, dtype=torch.float64)
    x, magnitude = centred(features.index_select(0, groups.order))
    with torch.autocast(device_type=x.device.type, enabled=False):  # costs never in bf16, even under AMP
        with deferred_recompute() as overflows:
            rho = DISTANCES[name](x, groups, **options)
        finite = max_abs(rho.detach()) < math.inf  # false for any inf or NaN (NaN propagates)
        late = torch.stack([*overflows, finite]).tolist()  # one sync
        if not late[-1]:
            check_batch(features, labels)  # names the bad rows
            proj = options.get("projections")
            if proj is not None and not bool(torch.isfinite(proj.to(x.dtype)).all()):
                raise ValueError(_NON_FINITE_PROJECTIONS.format(dtype=x.dtype))
            error = None if proj is None else zero_directions(proj, x.dtype)
            if error is not None:
                raise error
            raise overflow_error(name)
        if any(late[:-1]):  # more near-zero distances than recomputed: again, exactly
            rho = DISTANCES[name](x, groups, **options)
    return groups, rho, magnitude


def class_distances(
    features: Tensor, labels: Tensor, distance: str = "l2", **options: Any
) -> tuple[Tensor, Tensor]:
    """Distances between every pair of classes present in a batch.

    Args:
        features: [N, d] floating point features.
        labels: [N] integer class ids.
        distance: ``"l2"``, ``"emd"``, ``"sinkhorn"``/``"sk"``, ``"swd"``, ``"fastft"``/``"fft"``.
        **options: the distance's options (table above).

    Returns:
        ``(classes, rho)``: sorted present class ids [k] and [k(k−1)/2] distances in
        :func:`itertools.combinations` order of ``classes``, differentiable w.r.t. ``features``
        with the constant-plan gradient (float32; float64 for float64 input).
    """
    groups, rho, _ = grouped_distances(features, labels, distance, **options)
    return groups.classes, rho


__all__ = [
    "ALIASES",
    "DISTANCES",
    "OPTIONS",
    "ClassGroups",
    "check_options",
    "class_distances",
    "group_by_class",
    "random_projections",
    "resolve",
]
