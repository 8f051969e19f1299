r"""CPCC with fixed shapes and no host sync, replayed as a CUDA graph (``CPCCLoss(cuda_graph=True)``).

At the batch sizes of training (N ≈ 1024) a CPCC call on a GPU is bound by kernel launches and
host syncs, not by arithmetic. Here the loss and its gradient with respect to the features are
computed together by :func:`fixed_loss` over all K label ids
(:mod:`otcpcc.distances.fixed`): every shape depends only on (N, d, K), and nothing is read on the
host. On CUDA, :class:`GraphCache` captures that computation once per input shape as a CUDA graph
and replays it every call: about three launches (two copies in, one replay) instead of a few
hundred, and no wait for the GPU. On CPU the same computation runs eagerly (the graph's CPU twin).
The capture runs in ``thread_local`` mode, so a DataLoader's pin-memory thread or NCCL's watchdog
cannot break it; if a capture fails all the same, a warning names the error and that shape is
computed eagerly (same values).

The returned loss is the same CPCC as the default path: the Pearson correlation over the pairs of
classes present (a mask over all K(K−1)/2 pairs), the same rounding-level rule for "undefined"
(loss 1.0, zero gradient), the same closed-form gradient. Its backward multiplies the stored
gradient by the incoming one (the chain rule: exact however the loss is used downstream); asking
for second derivatives (``create_graph=True``) raises. Above ``MAX_CLASSES`` labels it is refused.

What cannot be checked without a sync is not raised: a label outside 0..K−1, NaN/inf features or
distances that overflow make the loss and its gradient NaN (run once without ``cuda_graph`` to get
the one-line error). Supported: ``l2``, ``swd`` (fresh random directions are drawn on the features' device:
the same law as the default path's, another random stream) and ``fastft`` with uniform weights in
batch order.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..distances.cost import centred, max_abs
from ..distances.fixed import (
    FIXED_DISTANCES,
    chunk_entries,
    class_counts,
    fixed_fastft,
    fixed_l2,
    fixed_swd,
    pair_index,
)
from ..distances.swd import check_projection_shape, random_projections
from .correlation import _GradUnit, correlation, rounding_spread

MAX_GRAPHS = 4  # input shapes kept captured at once (e.g. full and last batch), oldest dropped
MAX_CLASSES = 4096  # K(K−1)/2 ≈ 8.4M pairs: ~0.5 GB of pair arrays and distances per call
WARMUP_CALLS = 3  # eager calls on a side stream before capture (as torch.cuda.graphs advises)


def check_fixed(distance: str, options: dict, num_classes: int | None = None) -> None:
    """One-line ValueError where ``cuda_graph=True`` cannot compute ``distance`` with ``options``
    (or over ``num_classes`` labels: all K(K−1)/2 pairs every call, at most ``MAX_CLASSES``)."""
    if num_classes is not None and num_classes > MAX_CLASSES:
        pairs = num_classes * (num_classes - 1) // 2
        raise ValueError(f"cuda_graph=True computes all K(K-1)/2 label pairs on every call: "
                         f"{pairs:,} for K = {num_classes} (at most {MAX_CLASSES} classes); drop "
                         "cuda_graph (the default path computes only the pairs present in a batch)")
    if distance not in FIXED_DISTANCES:
        raise ValueError(f"cuda_graph=True supports distance {', '.join(FIXED_DISTANCES)}, got "
                         f"{distance!r}; drop cuda_graph for it (its shapes depend on the batch)")
    if distance != "fastft":
        return
    unsupported = {k: v for k, v in options.items()
                   if (k, v) not in (("weights", "uniform"), ("order", "batch"))}
    if unsupported:
        k, v = next(iter(unsupported.items()))
        raise ValueError(f"cuda_graph=True computes fastft with uniform weights in batch order only, "
                         f"got {k}={v!r}; drop cuda_graph or the option")


def directions(d: int, n_projections: int, device: torch.device) -> Tensor:
    """[d, L] fresh random unit directions drawn on ``device`` (its generator: on CUDA this is
    graph-safe, a captured graph draws new ones at every replay)."""
    theta = torch.randn(d, n_projections, device=device)
    return theta / torch.linalg.vector_norm(theta, dim=0, keepdim=True)


def fixed_loss(features: Tensor, labels: Tensor, target: Tensor, pairs: tuple[Tensor, Tensor],
               k: int, distance: str, chunk: int, theta: Tensor | None = None, p: float = 2,
               n_projections: int = 10) -> Tensor:
    """``1 − CPCC`` of ``features`` [N, d] and ``labels`` [N] (ids 0..K−1) with fixed shapes and
    no host sync: a scalar tensor, NaN where a label is out of range or a distance not finite.

    ``target``: [K(K−1)/2] target distances of ``pairs`` (the K labels' pairs i < j, triu order);
    ``chunk``: entries per chunk (:func:`otcpcc.distances.fixed.chunk_entries`). swd: ``theta``
    [d, L] directions on the features' device (None: ``n_projections`` fresh ones per call,
    :func:`directions`) and ``p``; a zero direction makes the loss NaN."""
    labels = labels.long()
    bad = ((labels < 0) | (labels >= k)).any()
    labels = labels.clamp(0, k - 1)
    if features.requires_grad:
        features = _GradUnit.apply(features)
    unit = features.grad_fn if features.requires_grad else None
    with torch.autocast(device_type=features.device.type, enabled=False):
        x, magnitude = centred(features)  # as otcpcc.distances.grouped_distances
        counts = class_counts(labels, k)
        if distance == "l2":
            rho = fixed_l2(x, labels, counts, pairs, chunk)
        elif distance == "fastft":
            rho = fixed_fastft(x, labels, counts, pairs, chunk)
        else:
            if theta is None:
                theta = directions(x.shape[1], n_projections, x.device)
            bad = bad | (theta == 0).all(0).any()
            rho = fixed_swd(x, labels, counts, pairs, theta, p, chunk)
        present = counts > 0
        mask = present.index_select(0, pairs[0]) & present.index_select(0, pairs[1])
        bad = bad | ~(max_abs(torch.where(mask, rho.detach(), 0)) < math.inf)  # NaN or inf
        corr, _ = correlation(target, rho, rounding_spread(magnitude, x.shape[1], rho.dtype), unit, mask)
    return torch.where(bad, math.nan, 1.0 - corr)


def value_and_grad(fn: Callable[[Tensor, Tensor], Tensor], x: Tensor,
                   labels: Tensor) -> tuple[Tensor, Tensor]:
    """``fn(x, labels)`` (a scalar) and its gradient with respect to ``x``, both detached; a NaN
    loss (bad input, see the module docstring) gets a NaN gradient, so gradient checks (a
    ``GradScaler``, ``clip_grad_norm_(error_if_nonfinite=True)``) see it too."""
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        loss = fn(leaf, labels)
        (grad,) = torch.autograd.grad(loss, leaf)
    loss = loss.detach()
    return loss, grad.add_(loss * 0)  # + 0, or NaN where the loss is NaN (it is never inf)


class _Precomputed(torch.autograd.Function):
    """``loss`` as a function of ``x`` whose gradient ``grad`` was computed with it."""

    @staticmethod
    def forward(ctx, x, loss, grad):  # noqa: D102
        ctx.save_for_backward(grad)
        return loss.clone()

    @staticmethod
    def backward(ctx, g):  # noqa: D102
        if torch.is_grad_enabled():  # create_graph=True: a second derivative is asked for
            raise RuntimeError("CPCCLoss(cuda_graph=True) has no second derivatives (its gradient "
                               "is computed with the value, a constant here); drop cuda_graph for "
                               "gradient penalties or create_graph=True")
        (grad,) = ctx.saved_tensors
        return grad * g.to(grad.dtype), None, None


def attach(x: Tensor, loss: Tensor, grad: Tensor) -> Tensor:
    """``loss`` connected to ``x`` for autograd, with the precomputed gradient ``grad``."""
    return _Precomputed.apply(x, loss, grad)


class _Captured:
    """One CUDA graph of :func:`value_and_grad` for one input shape, with its static buffers."""

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, labels: Tensor):
        self.x = x.detach().clone()
        self.labels = labels.clone()
        # x's device current (the capture stream is made on the current device); the outer
        # stream context restores the caller's stream even where a failed capture skips the
        # inner one's exit; autocast off, so no autocast cache enters the graph (fn computes
        # without autocast anyway)
        with torch.cuda.device(x.device), torch.cuda.stream(torch.cuda.current_stream(x.device)), \
                torch.autocast("cuda", enabled=False):
            side = torch.cuda.Stream(device=x.device)
            side.wait_stream(torch.cuda.current_stream(x.device))
            with torch.cuda.stream(side):
                for _ in range(WARMUP_CALLS):
                    value_and_grad(fn, self.x, self.labels)
            torch.cuda.current_stream(x.device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            # on x's device (torch's default capture stream is made once, on one device);
            # "thread_local": CUDA calls of other threads (a DataLoader's pin-memory thread, the
            # NCCL watchdog) run as usual instead of invalidating the capture (and failing there)
            with torch.cuda.graph(self.graph, stream=side, capture_error_mode="thread_local"):
                self.loss, self.grad = value_and_grad(fn, self.x, self.labels)

    def __call__(self, x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        self.x.copy_(x.detach())
        self.labels.copy_(labels)
        self.graph.replay()
        return self.loss.clone(), self.grad.clone()  # the next replay overwrites the buffers


class GraphCache:
    """CUDA graphs of one loss function, one per (shape, dtype, device) of its inputs. A copy
    (``copy.deepcopy``, pickling) starts empty: graphs are captured again where it is used.

    Where a capture fails (an operation CUDA cannot capture in this setting), a warning names
    the error and that shape is computed eagerly from then on: the same values and gradient, no
    host sync, only without the graph's saving of launches."""

    def __init__(self) -> None:
        self.graphs: OrderedDict[tuple, _Captured | None] = OrderedDict()  # None: eager

    def __getstate__(self) -> dict:
        return {"graphs": OrderedDict()}

    def __call__(self, fn: Callable[[Tensor, Tensor], Tensor], x: Tensor,
                 labels: Tensor) -> tuple[Tensor, Tensor]:
        """(loss, gradient w.r.t. x) of ``fn(x, labels)``, replayed from the graph of their shape
        (captured on first sight; at most ``MAX_GRAPHS`` kept)."""
        key = (tuple(x.shape), x.dtype, tuple(labels.shape), labels.dtype, x.device)
        if key in self.graphs:
            self.graphs.move_to_end(key)
        else:
            if len(self.graphs) >= MAX_GRAPHS:
                self.graphs.popitem(last=False)
            self.graphs[key] = _capture(fn, x, labels)
        graph = self.graphs[key]
        return value_and_grad(fn, x, labels) if graph is None else graph(x, labels)


def _capture(fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, labels: Tensor) -> _Captured | None:
    """The CUDA graph of ``value_and_grad(fn, x, labels)``, or None (with a warning) where the
    capture fails."""
    try:
        return _Captured(fn, x, labels)
    except RuntimeError as err:  # torch.AcceleratorError is a RuntimeError
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        warnings.warn(f"CPCCLoss(cuda_graph=True): capturing the CUDA graph for features "
                      f"{tuple(x.shape)} failed ({first}); computing this shape without a graph "
                      "(same values, more kernel launches). Please report it with this line.",
                      RuntimeWarning, stacklevel=4)
        return None



class FixedCPCC:
    """What ``CPCCLoss(cuda_graph=True)`` computes (module docstring): ``__call__(features,
    labels, tree_dist)`` -> the loss, with its gradient attached. Keeps, per device, the target
    over all label pairs and, per (d, device), the chunk size and swd's given or seeded directions:
    read once, since a captured graph reads them in place."""

    def __init__(self, distance: str, options: dict[str, Any], num_classes: int):
        check_fixed(distance, options, num_classes)
        self.distance, self.options = distance, options
        self.graphs = GraphCache()
        self._targets: dict[torch.device, tuple[Tensor, tuple[Tensor, Tensor]]] = {}
        self._shapes: dict[tuple[int, torch.device], dict[str, Any]] = {}

    def _target(self, tree_dist: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """[K(K−1)/2] target distances of the label pairs (i, j), and the pairs, on its device."""
        if tree_dist.device not in self._targets:
            k = tree_dist.shape[0]
            pi, pj = pair_index(k, tree_dist.device)
            self._targets[tree_dist.device] = tree_dist.view(-1).index_select(0, pi * k + pj), (pi, pj)
        return self._targets[tree_dist.device]

    def _shape_options(self, d: int, device: torch.device) -> dict[str, Any]:
        """``chunk``, and for swd ``theta`` (None: fresh directions per call), ``p``, ``n_projections``."""
        key = (d, device)
        if key not in self._shapes:
            found: dict[str, Any] = {"chunk": chunk_entries(d, device)}
            if self.distance == "swd":
                n_proj, seed = self.options.get("n_projections", 10), self.options.get("seed")
                theta = self.options.get("projections")
                if theta is None and seed is not None:
                    theta = random_projections(d, n_proj, seed, dtype=torch.float64)
                if theta is not None:
                    check_projection_shape(theta, d)
                    theta = theta.to(device)
                found.update(theta=theta, p=self.options.get("p", 2), n_projections=n_proj)
            self._shapes[key] = found
        return self._shapes[key]

    def __call__(self, features: Tensor, labels: Tensor, tree_dist: Tensor) -> Tensor:
        target, pairs = self._target(tree_dist)
        k = tree_dist.shape[0]
        opts = self._shape_options(features.shape[1], features.device)

        def fn(x: Tensor, y: Tensor) -> Tensor:
            return fixed_loss(x, y, target, pairs, k, self.distance, **opts)
        if not (features.requires_grad and torch.is_grad_enabled()):
            return fn(features, labels)
        if features.is_cuda:
            loss, grad = self.graphs(fn, features, labels)
        else:
            loss, grad = value_and_grad(fn, features, labels)
        return attach(features, loss, grad)
