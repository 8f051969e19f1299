"""Count the host-device synchronisations of a piece of code, on any device (also on CPU).

On CUDA every read of a tensor's value by the host waits for the GPU queue to drain (tens of
microseconds plus the queue). The same reads are visible on CPU, so a CPU run can guard them:

* profiler operators that read a value or size an output from data:
  ``aten::_local_scalar_dense`` (``.item()``, ``float(t)``, ``int(t)``, ``bool(t)``, ``if t:``,
  ``repeat_interleave`` without ``output_size``), ``aten::nonzero`` (also boolean-mask indexing
  and ``torch.where(mask)``), ``aten::unique*`` and ``aten::masked_select``;
* tensor methods that copy to the host: ``.tolist()``, ``.numpy()``, ``.cpu()``, and tensors built
  from host data onto a device (``torch.tensor(data, device=...)``: a blocking copy on CUDA). The
  profiler does not show these on CPU: they are counted by wrapping the methods while ``fn`` runs.

:func:`count_syncs` runs a callable once and returns the counts per source; ``total`` is the
number of host syncs the code would make on CUDA. ``ops`` counts the outermost computing operators
(:func:`_kernel_ops`): a rough proxy for the kernel launches.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.profiler as tp

SYNC_OPS = ("aten::_local_scalar_dense", "aten::nonzero", "aten::unique_consecutive",
            "aten::_unique", "aten::_unique2", "aten::unique_dim", "aten::masked_select")
HOST_METHODS = ("tolist", "numpy", "cpu")
HOST_FACTORIES = ("tensor", "as_tensor")
NOT_KERNELS = frozenset(
    "aten::" + op for op in (
        "view", "as_strided", "reshape", "_reshape_alias", "expand", "select", "slice", "detach",
        "empty", "empty_like", "empty_strided", "resize_", "t", "transpose", "unsqueeze",
        "squeeze", "alias", "permute", "lift_fresh", "to", "_to_copy", "item", "is_nonzero",
        "flatten", "unflatten", "diagonal", "contiguous", "numpy_T", "result_type", "view_as",
        "expand_as", "split", "chunk", "unbind", "narrow", "resolve_conj", "resolve_neg",
        "_local_scalar_dense", "set_", "zeros_like_meta", "broadcast_tensors", "as_strided_",
        "scalar_tensor"))


@contextmanager
def _host_copies(counts: Counter[str]):
    """Count calls of the host-copy tensor methods, and tensors built from host data onto a given
    device (a blocking host-to-device copy on CUDA), by wrapping them for the duration (also seen
    inside autograd backward functions, where a TorchFunctionMode is not)."""
    saved = {name: getattr(torch.Tensor, name) for name in HOST_METHODS}
    factories = {name: getattr(torch, name) for name in HOST_FACTORIES}

    def method(name, fn):
        def wrapped(self, *args, **kwargs):
            counts[f"Tensor.{name}"] += 1
            return fn(self, *args, **kwargs)
        return wrapped

    def factory(name, fn):
        def wrapped(*args, **kwargs):
            if kwargs.get("device") is not None:
                counts[f"torch.{name}(device=)"] += 1
            return fn(*args, **kwargs)
        return wrapped

    try:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, method(name, fn))
        for name, fn in factories.items():
            setattr(torch, name, factory(name, fn))
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)
        for name, fn in factories.items():
            setattr(torch, name, fn)


@dataclass
class SyncCount:
    """What :func:`count_syncs` saw: ``by_source`` (operator or method -> count), ``total`` (host
    syncs) and ``ops`` (computing operators, a proxy for kernel launches)."""

    by_source: dict[str, int] = field(default_factory=dict)
    ops: int = 0

    @property
    def total(self) -> int:
        return sum(self.by_source.values())

    def __str__(self) -> str:
        parts = ", ".join(f"{k} {v}" for k, v in sorted(self.by_source.items()))
        return f"{self.total} syncs ({parts or 'none'}), {self.ops} ops"


def count_syncs(fn: Callable[[], object]) -> SyncCount:
    """Run ``fn()`` once under the profiler and count its host syncs (module docstring)."""
    found: Counter[str] = Counter()
    with tp.profile(activities=[tp.ProfilerActivity.CPU]) as prof, _host_copies(found):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    for e in prof.key_averages():
        if e.key in SYNC_OPS:
            found[e.key] += e.count
    return SyncCount({k: v for k, v in found.items() if v}, _kernel_ops(prof.events()))


def _computes(e) -> bool:
    if e.name.startswith("aten::") and e.name not in NOT_KERNELS:
        return True
    return any(_computes(c) for c in e.cpu_children)


def _kernel_ops(events) -> int:
    """Operators that would launch a kernel: outermost ``aten::`` calls (those made by Python or
    by an autograd node, not by another operator) that compute something themselves or through
    the operators they call (views, allocations and no-op conversions do not count)."""
    count = 0
    for e in events:
        if not e.name.startswith("aten::"):
            continue
        parent = e.cpu_parent
        if parent is not None and parent.name.startswith("aten::"):
            continue
        count += _computes(e)
    return count
