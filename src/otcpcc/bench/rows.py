"""What a bench row times: a distance name, or ``name+graph`` for ``CPCCLoss(..., cuda_graph=True)``."""

from __future__ import annotations

from collections.abc import Sequence

from ..distances import resolve
from ..distances.fixed import FIXED_DISTANCES

GRAPH = "+graph"  # a row's suffix: CPCCLoss(..., cuda_graph=True) (--cuda-graph)


def with_graph_rows(distances: Sequence[str], weights: str = "uniform") -> list[str]:
    """``distances`` with a ``+graph`` row after each one ``cuda_graph=True`` computes
    (:mod:`otcpcc.objectives.graphed`: l2, swd, and fastft with uniform weights)."""
    out = []
    for d in distances:
        out.append(d)
        if resolve(d) in FIXED_DISTANCES and (resolve(d) != "fastft" or weights == "uniform"):
            out.append(d + GRAPH)
    return out


def make_loss(tree, row: str, **options):
    """The ``CPCCLoss`` a bench row times: ``"fastft"``, or ``"fastft+graph"`` (cuda_graph=True)."""
    from otcpcc import CPCCLoss

    return CPCCLoss(tree, row.removesuffix(GRAPH), cuda_graph=row.endswith(GRAPH), **options)
