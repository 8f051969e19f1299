r"""Hierarchical cross-entropy (HXE): Bertinetto, Mueller, Tertikas, Samangooei, Lord, "Making
Better Mistakes: Leveraging Class Hierarchies with Deep Networks", CVPR 2020, §3.2.

For a leaf y with path :math:`y = C_0, C_1, \dots, C_H = \mathrm{root}` (H = depth of y; on an
unbalanced tree each leaf has its own H) and :math:`p(C) = \sum_{i \in \mathrm{leaves}(C)}
\mathrm{softmax}(z)_i`,

.. math:: \mathcal{L}(z, y) = -\sum_{l=0}^{H-1} \lambda(C_l)\,\log \frac{p(C_l)}{p(C_{l+1})},
          \qquad \lambda(C) = e^{-\alpha\, d(C)},

where :math:`d(C)` is the number of edges from the root down to C (so :math:`d(C_l) = H - l`):
the weight of each edge decays *down* the hierarchy, and a larger α puts relatively more weight
on the coarse decisions. This is the weighting of the authors' released code
(``better_mistakes/trees.py``: ``get_exponential_weighting`` weights the edge above a node at
tree position p by ``exp(-alpha * len(p))``); the paper writes :math:`h(C)` for this quantity. The
code also divides every weight by their sum over the whole tree, a constant that only rescales
the loss; it is left out here, so that α = 0 gives exactly ``F.cross_entropy`` (the sum
telescopes to :math:`-\log p(y)`). The paper reports α ∈ {0.1, …, 0.6}.

Computed in log space: with :math:`\ell(C) = \log \sum_{i \in \mathrm{leaves}(C)} e^{z_i}` (the
softmax normaliser cancels in every ratio), :math:`\log p(C_l)/p(C_{l+1}) = \ell(C_l) -
\ell(C_{l+1})`. :math:`\ell` is built bottom-up, each internal node's value the logsumexp of its
children's, one vectorised step per height of the tree: finite for any finite logits (no
``log(sum(softmax))`` underflow). Time O(N · nodes · max children), memory O(N · nodes).

Bad input as in :class:`~otcpcc.CPCCLoss`: NaN/inf logits raise a one-line ValueError naming the
rows (the scalar loss is checked, one host sync; the logits are scanned only when it is not
finite); an empty batch gives 0.0 with a zero gradient (the sum over no samples), not NaN.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .cpcc import check_logits_labels, empty_task_loss, finished_task_loss, real_option


def _heights(tree: Any) -> dict[str, int]:
    """Height of every node (leaves 0, a parent 1 + its highest child), without recursion."""
    height: dict[str, int] = {}
    order, stack = [], [tree.root]
    while stack:  # pre-order; reversed, every child comes before its parent
        n = stack.pop()
        order.append(n)
        stack.extend(tree.children(n))
    for n in reversed(order):
        kids = tree.children(n)
        height[n] = 1 + max(height[c] for c in kids) if kids else 0
    return height


class HXELoss(nn.Module):
    r"""Hierarchical cross-entropy of logits [N, K] and leaf-id labels [N]; the batch mean.

    Args:
        tree: a :class:`~otcpcc.LabelTree` (leaf index == class id); any depth, unbalanced allowed.
        alpha: α ≥ 0: the weight of the edge above node C is :math:`e^{-\alpha\, d(C)}`, d(C)
            = depth of C (edges from the root). α = 0 is ``F.cross_entropy``.

    Example::

        crit = HXELoss(tree, alpha=0.1)
        loss = crit(logits, labels)     # logits [N, K], labels [N] long
    """

    def __init__(self, tree: Any, alpha: float = 0.1):
        super().__init__()
        alpha = real_option(alpha, "alpha", "0.1")
        if not 0 <= alpha < float("inf"):
            raise ValueError(f"alpha must be a finite number >= 0, got {alpha}; pass e.g. 0.1")
        self.alpha = alpha
        self.num_classes = int(tree.num_classes)
        leaves = list(tree.leaves)
        height = _heights(tree)
        # columns of the log-mass matrix: 0 = a -inf pad, 1..K = leaves, then internal nodes by
        # height, so that each height step appends a contiguous block whose children exist
        col = {leaf: 1 + i for i, leaf in enumerate(leaves)}
        self._n_steps = 0
        by_height: list[list[str]] = [[] for _ in range(height[tree.root] + 1)]
        for n in tree.nodes:
            by_height[height[n]].append(n)
        for h in range(1, height[tree.root] + 1):
            nodes = by_height[h]
            kids = [[col[c] for c in tree.children(n)] for n in nodes]
            idx = torch.zeros(len(nodes), max(len(k) for k in kids), dtype=torch.long)
            for r, k in enumerate(kids):
                idx[r, : len(k)] = torch.tensor(k)  # short rows padded with column 0 (-inf)
            self.register_buffer(f"_children{self._n_steps}", idx, persistent=False)
            self._n_steps += 1
            for n in nodes:
                col[n] = len(col) + 1
        # per leaf, its H edges (C_l -> C_{l+1}) as column pairs and weights, padded with weight 0
        # (filled as numpy arrays, one row slice per leaf: O(Σ depths), also for trees 1000s deep)
        paths = [[col[leaf], *(col[a] for a in tree.ancestors(leaf))] for leaf in leaves]
        width = max(len(p) - 1 for p in paths)
        lower = np.zeros((self.num_classes, width), dtype=np.int64)
        upper = np.zeros((self.num_classes, width), dtype=np.int64)
        depth = np.zeros((self.num_classes, width), dtype=np.float64)
        on = np.zeros((self.num_classes, width), dtype=bool)
        for y, path in enumerate(paths):
            h = len(path) - 1  # the leaf's depth; edge l joins path[l] (depth h - l) to path[l + 1]
            lower[y, :] = upper[y, :] = path[0]  # pads: a finite column, weight 0
            lower[y, :h], upper[y, :h] = path[:-1], path[1:]
            depth[y, :h] = np.arange(h, 0, -1)
            on[y, :h] = True
        weight = torch.where(torch.from_numpy(on), torch.exp(torch.from_numpy(depth) * -alpha), 0.0)
        lower, upper = torch.from_numpy(lower), torch.from_numpy(upper)
        deepest = int(depth.max())
        if alpha * deepest > 80:  # exp(-80) ~ 2e-35: below float32's smallest normal number
            raise ValueError(f"alpha={alpha} makes the weight exp(-alpha * {deepest}) of the deepest "
                             "edge underflow float32, switching its term off; use alpha <= "
                             f"{80 / deepest:.3g} for this tree")
        self.register_buffer("_lower", lower, persistent=False)
        self.register_buffer("_upper", upper, persistent=False)
        self.register_buffer("_weight", weight, persistent=False)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, num_classes={self.num_classes}"

    def log_mass(self, logits: Tensor) -> Tensor:
        r"""[N, 1 + nodes]: column 0 is −inf, then :math:`\ell(C) = \log\sum_{i \in C} e^{z_i}` of
        the leaves (class-id order) and of the internal nodes (by height; the root last)."""
        out = torch.cat([logits.new_full((logits.shape[0], 1), float("-inf")), logits], dim=1)
        for i in range(self._n_steps):
            children = getattr(self, f"_children{i}")
            out = torch.cat([out, torch.logsumexp(out[:, children], dim=2)], dim=1)
        return out

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:  # noqa: D102
        labels = check_logits_labels(logits, labels, self.num_classes, "HXELoss")
        if logits.shape[0] == 0:
            return empty_task_loss(logits)
        if self._lower.device != logits.device:  # moved once, as CPCCLoss's target
            self.to(logits.device)
        ell = self.log_mass(logits)
        lo = ell.gather(1, self._lower[labels])  # [N, H]: l(C_l)
        up = ell.gather(1, self._upper[labels])  # l(C_{l+1})
        w = self._weight[labels].to(logits.dtype)
        return finished_task_loss(-(w * (lo - up)).sum(dim=1).mean(), logits, labels, "the HXE loss")
