r"""Per-sample weights within each class (the marginals of ``emd`` and ``fastft``).

* ``"uniform"``: :math:`w_i = 1/n`.
* ``"near"``: :math:`w_i \propto \exp(-\lVert x_i - \mu_c \rVert_2)`, samples near their class mean
  weigh more (softmax of minus the distance to the class mean).
* ``"far"``: :math:`w_i \propto \exp(+\lVert x_i - \mu_c \rVert_2)`, outlying samples weigh more.

Weights are part of the plan, so they are computed without gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .groups import ClassGroups
from .l2 import class_means

WEIGHTINGS = ("uniform", "near", "far")


def sample_weights(x: Tensor, groups: ClassGroups, kind: str = "uniform") -> Tensor | None:
    """[N] float64 weights in grouped order, summing to 1 within each class; None for uniform.

    ``kind`` is one of ``WEIGHTINGS`` (checked by :func:`otcpcc.distances.check_options`)."""
    if kind == "uniform":
        return None
    x = x.detach().to(torch.float64)
    cls = groups.class_index()
    k = groups.num_classes
    dist = (x - class_means(x, groups).index_select(0, cls)).norm(dim=1)
    logits = -dist if kind == "near" else dist
    shift = torch.full((k,), -torch.inf, dtype=x.dtype, device=x.device)
    shift = shift.scatter_reduce(0, cls, logits, reduce="amax")
    e = torch.exp(logits - shift[cls])
    total = torch.zeros(k, dtype=x.dtype, device=x.device).index_add_(0, cls, e)
    return e / total[cls]
