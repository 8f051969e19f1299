"""Label trees: build, validate, and measure distances between the leaves (the fine classes).

A :class:`LabelTree` is a rooted tree whose leaves are the fine classes; the leaf index is the
class id used in labels. Every edge (child, parent) carries a non-negative finite weight
(default 1.0). The tree distance between leaves i and j is the weighted shortest-path length

    d(i, j) = sum of the edge weights on the path i -> lca(i, j) -> j
            = w(i -> root) + w(j -> root) - 2 * w(lca(i, j) -> root),

where ``w(n -> root)`` is the sum of the edge weights from node n up to the root. With unit
weights this is ``depth(i) + depth(j) - 2 * depth(lca)``.

Constructors (classmethods): :meth:`LabelTree.from_parents`, :meth:`LabelTree.from_edges`,
:meth:`LabelTree.from_levels`, :meth:`LabelTree.from_file` (edge lists, JSON, Newick);
:meth:`LabelTree.to_file` writes any of the three file formats so that files round-trip
(leaf order, structure and weights); the file formats are read and written in
:mod:`otcpcc.tree.files`.

Leaf order (= class ids) is the order of first appearance in the input: dict order for
``from_parents`` (a child before its parent in each item), edge order for ``from_edges`` and edge
files, left-to-right order for Newick and nested JSON, index order for ``from_levels``.
:meth:`LabelTree.restrict` reorders the leaves as asked.

Every invalid input raises :class:`TreeError` (a ``ValueError``) with a one-line message naming
the offending nodes and the fix.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .common import Level, TreeError, _check_name, _check_weight, _listed, _second_parent
from .files import read_tree, write_tree
from .levels import depth_levels, named_levels, parents_from_levels


class LabelTree:
    """A rooted label tree whose leaves are the fine classes (leaf index == class id).

    Build it with one of the classmethods (``from_parents``, ``from_edges``, ``from_levels``,
    ``from_file``); the tree is immutable afterwards. Attributes: ``leaves`` (leaf names, in
    class-id order), ``nodes`` (all node names, first-appearance order), ``root``,
    ``num_classes`` (== ``len(tree)``), ``levels`` (coarse levels, finest first).
    """

    # ------------------------------------------------------------------ construction
    def __init__(
        self,
        parent: Mapping[str, str | None],
        weight: Mapping[str, float] | None = None,
        *,
        leaves: Sequence[str] | None = None,
        level_spec: Sequence[tuple[str, Sequence[str]]] | None = None,
    ) -> None:
        """Validate and build a tree (prefer the ``from_*`` classmethods).

        ``parent`` maps every node (insertion order = node order) to its parent, ``None`` for
        the root; every parent must itself be a key. ``weight`` maps a child to the weight of
        its edge to the parent (default 1.0). ``leaves`` optionally fixes the leaf order (must
        be a permutation of the childless nodes). ``level_spec`` optionally fixes the coarse
        levels as (level name, node names in id order) pairs.
        """
        if len(parent) == 0:
            raise TreeError("empty tree: no nodes were given; a tree needs at least one leaf")
        self._parent: dict[str, str | None] = {}
        for child, par in parent.items():
            child = _check_name(child)
            if par is not None:
                par = _check_name(par, f"parent of {child!r}")
                if par not in parent:
                    raise TreeError(f"parent {par!r} of {child!r} is not a node of the tree")
            self._parent[child] = par
        weight = dict(weight or {})
        unknown = [c for c in weight if c not in self._parent]
        if unknown:
            raise TreeError(f"weights given for unknown nodes {_listed(unknown)}")
        at_root = [c for c in weight if self._parent[c] is None]
        if at_root:
            raise TreeError(
                f"weight given for root {_listed(at_root)}, which has no parent edge; weights "
                "are keyed by the child of each edge"
            )
        self._weight: dict[str, float] = {
            c: _check_weight(weight.get(c, 1.0), c, p) for c, p in self._parent.items() if p is not None
        }
        self._find_cycle()
        roots = [n for n, p in self._parent.items() if p is None]
        if len(roots) != 1:  # 0 is impossible without a cycle
            raise TreeError(
                f"several roots: {_listed(roots)} have no parent; give them a common parent "
                "so the tree has exactly one root"
            )
        self._root: str = roots[0]
        self._nodes: list[str] = list(self._parent)
        self._children: dict[str, list[str]] = {n: [] for n in self._nodes}
        for c, p in self._parent.items():
            if p is not None:
                self._children[p].append(c)
        natural = [n for n in self._nodes if not self._children[n]]
        if leaves is None:
            self._leaves = natural
        else:
            self._leaves = [str(x) for x in leaves]
            if sorted(self._leaves) != sorted(natural):
                raise TreeError("internal: the given leaf order is not a permutation of the leaves")
        self._leaf_index: dict[str, int] = {n: i for i, n in enumerate(self._leaves)}
        # depth and cumulative weight to the root, top-down
        self._depth: dict[str, int] = {self._root: 0}
        self._rootw: dict[str, float] = {self._root: 0.0}
        stack = [self._root]
        while stack:
            n = stack.pop()
            for c in self._children[n]:
                self._depth[c] = self._depth[n] + 1
                self._rootw[c] = self._rootw[n] + self._weight[c]
                stack.append(c)
        self._dist: np.ndarray | None = None
        self._levels: list[Level] | None = None
        self._level_spec: list[tuple[str, list[str]]] | None = None
        if level_spec is not None:
            self._level_spec = [(str(a), [str(x) for x in b]) for a, b in level_spec]
            self._levels = named_levels(self, self._level_spec)
        self._under: dict[str, list[int]] | None = None

    def _find_cycle(self) -> None:
        state: dict[str, int] = {}  # 1 = on the current walk, 2 = reaches the root
        for start in self._parent:
            path: list[str] = []
            n: str | None = start
            while n is not None and n not in state:
                state[n] = 1
                path.append(n)
                n = self._parent[n]
            if n is not None and state[n] == 1:
                cyc = path[path.index(n) :] + [n]
                raise TreeError(
                    "cycle in the tree: "
                    + " -> ".join(repr(x) for x in cyc)
                    + " (child -> parent); remove one of these edges"
                )
            for x in path:
                state[x] = 2

    @classmethod
    def from_parents(
        cls,
        parent_of: Mapping[str, str | None],
        weights: Mapping[str, float] | None = None,
    ) -> LabelTree:
        """Build from a child -> parent map (``None`` marks the root; parents need not be keys).

        ``weights[child]`` is the weight of the edge (child, parent), default 1.0. Node order
        is first appearance scanning (child, parent) per item, so leaves follow dict order.

        >>> t = LabelTree.from_parents({"cat": "mammal", "dog": "mammal", "mammal": "animal"})
        >>> t.leaves, t.root
        (['cat', 'dog'], 'animal')
        """
        if not isinstance(parent_of, Mapping):
            raise TreeError(
                f"from_parents needs a mapping {{child: parent}}, got a {type(parent_of).__name__}; "
                "for (parent, child) pairs use LabelTree.from_edges"
            )
        parent: dict[str, str | None] = {}
        for child, par in parent_of.items():
            child = _check_name(child)
            # a key may already be present as an implicit parent (with None): set it for real
            parent[child] = par
            if par is not None:
                par = _check_name(par, f"parent of {child!r}")
                parent.setdefault(par, None)
        return cls(parent, weights)

    @classmethod
    def from_edges(
        cls,
        edges: Iterable[tuple[str, str] | tuple[str, str, float]],
        *,
        on_multiple_parents: str = "error",
    ) -> LabelTree:
        """Build from ``(parent, child)`` or ``(parent, child, weight)`` edges.

        Leaves (and nodes) are ordered by first appearance in the edge sequence. A repeated
        identical edge is ignored. A node with two different parents (a DAG such as WordNet)
        raises :class:`TreeError`, unless ``on_multiple_parents="first"``: then the first
        parent seen is kept, later edges into that node are dropped, and nodes left without
        children by the dropping (that had children in the input) are removed, so that no
        spurious leaves appear.
        """
        return cls._from_edge_list(list(edges), on_multiple_parents, None)

    @classmethod
    def _from_edge_list(
        cls,
        edges: list[Any],
        on_multiple_parents: str,
        where: list[str] | None,
    ) -> LabelTree:
        if on_multiple_parents not in ("error", "first"):
            raise TreeError(f"on_multiple_parents={on_multiple_parents!r} is unknown; use 'error' or 'first'")
        if not edges:
            raise TreeError("empty tree: no edges were given; a tree needs at least one edge")
        order: dict[str, None] = {}
        parent: dict[str, str] = {}
        weight: dict[str, float] = {}
        has_children: set[str] = set()
        given_at: dict[str, str] = {}  # child -> where its parent edge is (" (file:line)")
        dropped = False
        for k, e in enumerate(edges):
            at = f" ({where[k]})" if where is not None else ""
            if isinstance(e, str | bytes) or not hasattr(e, "__len__") or len(e) not in (2, 3):
                raise TreeError(f"edge {e!r}{at} is not (parent, child) or (parent, child, weight)")
            p = _check_name(e[0], f"parent in edge {tuple(e)!r}{at}")
            c = _check_name(e[1], f"child in edge {tuple(e)!r}{at}")
            w = _check_weight(e[2], c, p) if len(e) == 3 else 1.0
            if p == c:
                raise TreeError(f"edge {p!r} -> {c!r}{at} makes {c!r} its own parent (a cycle {c!r} -> {c!r}); "
                                "remove that edge")
            order.setdefault(p, None)
            order.setdefault(c, None)
            has_children.add(p)
            if c in parent:
                if parent[c] == p:
                    if weight[c] != w:
                        raise TreeError(
                            f"edge {p!r} -> {c!r}{at} is given twice with weights {weight[c]!r} and {w!r}; keep one"
                        )
                    continue
                if on_multiple_parents == "error":
                    raise TreeError(_second_parent(c, parent[c], given_at[c], p, at, parent))
                dropped = True
                continue
            parent[c] = p
            weight[c] = w
            given_at[c] = at
        nodes = list(order)
        if dropped:
            # prune nodes that had children in the input but lost all of them
            kids: dict[str, int] = {n: 0 for n in nodes}
            for p in parent.values():
                kids[p] += 1
            removed: set[str] = set()
            stack = [n for n in nodes if n in has_children and kids[n] == 0]
            while stack:
                n = stack.pop()
                removed.add(n)
                p = parent.get(n)
                if p is not None:
                    kids[p] -= 1
                    if kids[p] == 0:
                        stack.append(p)
            nodes = [n for n in nodes if n not in removed]
        full: dict[str, str | None] = {n: parent.get(n) for n in nodes}
        return cls(full, {c: weight[c] for c in nodes if c in parent})

    @classmethod
    def from_levels(
        cls,
        levels: Sequence[Any],
        leaf_names: Sequence[str] | None = None,
        level_names: Sequence[str] | None = None,
        node_names: Sequence[Sequence[str]] | None = None,
    ) -> LabelTree:
        """Build a balanced tree from per-level ancestor arrays (bottom-up); a root is added on top.

        ``levels[l]`` is an integer array [K]: ``levels[l][i]`` = id of fine class i's ancestor
        at level l (level 0 = the parents of the leaves); the ids of each level must be
        ``0..n_l-1`` with none unused. The levels must nest: fine classes sharing a level-l id
        share their level-(l+1) id. Leaf i is class i. Names: ``leaf_names`` (default
        ``"0".."K-1"``), ``level_names`` (default ``"level1".."levelL"``), ``node_names[l][id]``
        (default ``f"{level_name}_{id}"``), root ``"root"`` (or ``"_root"``, ``"__root"``, ... if
        a given name is ``"root"``). All node names must be distinct.
        All edge weights are 1. ``tree.levels`` returns exactly these levels.
        """
        parent, leaves, spec = parents_from_levels(levels, leaf_names, level_names, node_names)
        return cls(parent, leaves=leaves, level_spec=spec)

    # ------------------------------------------------------------------ files
    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        format: str | None = None,
        *,
        on_multiple_parents: str = "error",
    ) -> LabelTree:
        """Read a tree file; ``format`` is inferred from the suffix when ``None`` (from the contents
        for any other suffix: ``{`` JSON, ``(`` Newick, else an edge list).

        Formats:

        * ``"edges"`` (.txt/.tsv/.edges): one edge per line, ``parent child [weight]``,
          whitespace separated (in a .csv file, read by its contents: comma separated); ``#``
          starts a comment, blank lines are ignored (the BREEDS ``class_hierarchy.txt`` format).
          ``on_multiple_parents`` as in :meth:`from_edges`.
        * ``"json"`` (.json): a nested dict ``{"animal": {"mammal": {"cat": {}, "dog": {}}}}``
          (leaves as ``{}``, ``null``, or children given as a list of names), a flat
          ``{"child": "parent" | null}`` map, or ``{"parents": {child: parent},
          "weights": {child: w}, "levels": [{"name": str, "nodes": [str, ...]}, ...]}``
          ("weights" and "levels" optional; levels finest first, as ``tree.levels``).
        * ``"newick"`` (.nwk/.newick/.tre/.tree): ``((cat:1,dog:1)mammal:1,trout:2)animal;``;
          branch lengths become weights (default 1), names may be quoted with ``'...'``
          (``''`` for a quote), ``[...]`` comments are skipped, underscores are kept as is, and
          unnamed internal nodes are named ``"_node1"``, ``"_node2"``, ...
        """
        return read_tree(cls, path, format, on_multiple_parents)

    def to_file(self, path: str | os.PathLike[str], format: str | None = None) -> None:
        """Write the tree so that :meth:`from_file` reads back the same tree and leaf order.

        ``format`` ('edges', 'json', 'newick') is inferred from the suffix when ``None``.
        Weights are written only when some weight differs from 1. Edges: one
        ``parent child [weight]`` line per edge, ordered so leaves appear in class-id order
        (names must not contain whitespace or '#'). JSON: nested when unweighted, without
        named levels and with a depth-first leaf order, else ``{"parents": ..., "weights": ...,
        "levels": ...}``; only JSON keeps the named levels of a ``from_levels`` tree (edges and
        Newick files read back get depth-based levels). Newick: needs the leaf order to be a
        depth-first order (raises otherwise; use edges or JSON).
        """
        write_tree(self, path, format)

    # ------------------------------------------------------------------ queries
    @property
    def leaves(self) -> list[str]:
        """Leaf names; ``leaves[i]`` is class i (do not mutate)."""
        return self._leaves

    @property
    def nodes(self) -> list[str]:
        """All node names, in first-appearance order of the input (do not mutate)."""
        return self._nodes

    @property
    def root(self) -> str:
        """The root node's name."""
        return self._root

    @property
    def num_classes(self) -> int:
        """Number of leaves K (== number of fine classes)."""
        return len(self._leaves)

    def __len__(self) -> int:
        return len(self._leaves)

    def __repr__(self) -> str:
        depth = max(self._depth[n] for n in self._leaves)
        return f"LabelTree(root={self._root!r}, nodes={len(self._nodes)}, leaves={len(self._leaves)}, depth={depth})"

    def _check_node(self, name: str) -> str:
        if name not in self._parent:
            raise TreeError(f"unknown node {name!r}; it is not in this tree")
        return name

    def index(self, name: str) -> int:
        """Class id of leaf ``name``."""
        if not isinstance(name, str):
            raise TreeError(f"leaf name {name!r} is a {type(name).__name__}; pass one name (a string)")
        try:
            return self._leaf_index[name]
        except (KeyError, TypeError):
            pass
        if name in self._parent:
            raise TreeError(f"{name!r} is an internal node, not a leaf; only leaves have class ids")
        raise TreeError(f"unknown leaf {name!r}; it is not in this tree")

    def parent(self, name: str) -> str | None:
        """Parent of ``name`` (``None`` for the root)."""
        return self._parent[self._check_node(name)]

    def children(self, name: str) -> list[str]:
        """Children of ``name`` in input order ([] for a leaf)."""
        return list(self._children[self._check_node(name)])

    def depth(self, name: str) -> int:
        """Number of edges from the root to ``name`` (root: 0)."""
        return self._depth[self._check_node(name)]

    def weight(self, name: str) -> float:
        """Weight of the edge from ``name`` to its parent (0.0 for the root)."""
        return self._weight.get(self._check_node(name), 0.0)

    def ancestors(self, name: str) -> list[str]:
        """Ancestors of ``name``, from its parent up to the root ([] for the root)."""
        out: list[str] = []
        n = self._parent[self._check_node(name)]
        while n is not None:
            out.append(n)
            n = self._parent[n]
        return out

    def leaves_under(self, node: str) -> list[int]:
        """Class ids of the leaves in the subtree of ``node`` (ascending; [i] for leaf i)."""
        self._check_node(node)
        if self._under is None:
            under: dict[str, list[int]] = {n: [] for n in self._nodes}
            for i, leaf in enumerate(self._leaves):
                n: str | None = leaf
                while n is not None:
                    under[n].append(i)
                    n = self._parent[n]
            self._under = under
        return list(self._under[node])

    def distance_matrix(self) -> np.ndarray:
        """Weighted path lengths between all leaves, float64 [K, K] (read-only, cached).

        ``D[i, j] = w(i -> root) + w(j -> root) - 2 w(lca(i, j) -> root)``, evaluated as
        ``(w(i -> root) - w(lca -> root)) + (w(j -> root) - w(lca -> root))`` to avoid
        cancellation. Computed once: leaves are laid out in depth-first order, so every node's
        leaves form one contiguous block; for each node n and each child block, the pairs
        between that child's block and the rest of n's block have lca n and are written with one
        broadcast slice assignment. Every pair is written exactly once: O(K^2) time and memory.
        """
        if self._dist is None:
            k = len(self._leaves)
            # depth-first layout: pos -> leaf id, and each node's [start, end) block
            order: list[int] = []
            start: dict[str, int] = {}
            end: dict[str, int] = {}
            stack: list[tuple[str, bool]] = [(self._root, False)]
            while stack:
                n, closing = stack.pop()
                if closing:
                    end[n] = len(order)
                    continue
                start[n] = len(order)
                if not self._children[n]:
                    order.append(self._leaf_index[n])
                    end[n] = len(order)
                    continue
                stack.append((n, True))
                stack.extend((c, False) for c in reversed(self._children[n]))
            perm = np.asarray(order, dtype=np.int64)
            rw = np.array([self._rootw[n] for n in self._leaves])[perm]  # w(leaf -> root), DFS
            dist = np.zeros((k, k))
            for n in self._nodes:
                kids = self._children[n]
                if len(kids) < 2:
                    continue
                s, e, wn = start[n], end[n], self._rootw[n]
                up = rw[s:e] - wn  # w(leaf -> n) for the leaves under n
                for c in kids:
                    a, b = start[c] - s, end[c] - s
                    col = up[a:b, None]
                    if a > 0:
                        np.add(col, up[None, :a], out=dist[s + a : s + b, s : s + a])
                    if b < e - s:
                        np.add(col, up[None, b:], out=dist[s + a : s + b, s + b : e])
            if not np.array_equal(perm, np.arange(k)):
                inv = np.empty(k, dtype=np.int64)
                inv[perm] = np.arange(k)
                dist = dist[inv[:, None], inv[None, :]]  # one 2-D gather (take() is slow)
            dist.setflags(write=False)
            self._dist = dist
        return self._dist

    @property
    def levels(self) -> list[Level]:
        """Coarse levels, finest first; the root and the leaf level are excluded.

        For ``from_levels`` trees (and JSON files that list levels): exactly the given levels
        (after :meth:`restrict`, the levels keep their names and the ids of the remaining nodes
        are renumbered in the same relative order). Otherwise one level per depth d = D-1, ..., 1 (D = the largest
        leaf depth), named ``"depth{d}"``: each leaf maps to its ancestor at depth d, or to
        itself when it is no deeper than d. Ids number that level's nodes in order of first
        appearance over the leaves. O(D · K log K) for D levels of K leaves
        (:func:`~otcpcc.tree.levels.depth_levels`).
        """
        if self._levels is None:  # named levels were set up by __init__; these are by depth
            self._levels = depth_levels(self)
        return self._levels

    # ------------------------------------------------------------------ derived trees
    def restrict(self, leaves: Sequence[str]) -> LabelTree:
        """Subtree spanned by ``leaves`` and their ancestors; leaf ids follow ``leaves``' order.

        Edge weights, and hence the distances between kept leaves, are unchanged (chains are not
        collapsed; the root stays). For a ``from_levels`` tree the levels are kept (by name).
        """
        leaves = list(leaves)
        if not leaves:
            raise TreeError("empty tree: restrict() needs at least one leaf")
        for x in leaves:
            self.index(x)
        counts: dict[str, int] = {}
        for x in leaves:
            counts[x] = counts.get(x, 0) + 1
        dup = [x for x, c in counts.items() if c > 1]
        if dup:
            raise TreeError(f"duplicate leaf names {_listed(dup)} given to restrict(); list each once")
        keep: set[str] = set()
        for x in leaves:
            n: str | None = x
            while n is not None and n not in keep:
                keep.add(n)
                n = self._parent[n]
        parent = {n: self._parent[n] for n in self._nodes if n in keep}
        weight = {n: self._weight[n] for n in parent if n in self._weight}
        spec = None
        if self._level_spec is not None:
            spec = [(a, [x for x in b if x in keep]) for a, b in self._level_spec]
        return LabelTree(parent, weight, leaves=leaves, level_spec=spec)
