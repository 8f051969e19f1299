"""Label-tree files: read and write edge lists, JSON and Newick.

:func:`read_tree` and :func:`write_tree` back :meth:`LabelTree.from_file` and
:meth:`LabelTree.to_file`, whose docstrings describe the three formats. Every invalid file raises
:class:`TreeError` with a one-line message naming the file (and line, where known) and the fix.
"""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..textfile import parse_number, read_text
from .common import TreeError, _check_name, _listed

if TYPE_CHECKING:  # the class is passed in as ``cls``: no import cycle at run time
    from .labeltree import LabelTree

__all__ = ["read_tree", "write_tree"]

_FORMATS = ("edges", "json", "newick")
_EXPECTED = {"edges": "an edge-list tree ('parent child [weight]' lines)",
             "json": "a JSON tree ({\"child\": \"parent\", ...} or nested)",
             "newick": "a Newick tree (such as '((a,b)x,(c,d)y)root;')"}
NESTED_JSON_MAX_DEPTH = 200  # deeper trees are written flat: json's parser recurses per level
_SUFFIXES = {
    ".txt": "edges",
    ".tsv": "edges",
    ".edges": "edges",
    ".json": "json",
    ".nwk": "newick",
    ".newick": "newick",
    ".tre": "newick",
    ".tree": "newick",
}


def _format_of(path: Path, format: str | None) -> str | None:
    if format is not None:
        if format not in _FORMATS:
            raise TreeError(f"unknown tree format {format!r}; use one of {', '.join(_FORMATS)}")
        return format
    return _SUFFIXES.get(path.suffix.lower())  # None: from the contents (_sniff)


def _sniff(text: str) -> str:
    """The format of a tree file whose suffix says none (``hierarchy``, ``tree.csv``), from its
    first character that is not blank: ``{`` JSON, ``(`` Newick, else an edge list (the one format
    with ``#`` comments; its parser names what it finds instead)."""
    start = text.lstrip()[:1]
    return {"{": "json", "(": "newick"}.get(start, "edges")


# ---------------------------------------------------------------------- reading
def read_tree(
    cls: type[LabelTree],
    path: str | os.PathLike[str],
    format: str | None = None,
    on_multiple_parents: str = "error",
) -> LabelTree:
    """Read a tree file (see :meth:`LabelTree.from_file`); ``format`` is inferred from the suffix
    (another suffix: from the contents, :func:`_sniff`).
    Every TreeError names the file (a cycle or a second root is found after parsing)."""
    path = Path(path)
    fmt = _format_of(path, format)
    try:
        text = read_text(path, _EXPECTED[fmt] if fmt else "a tree file (an edge list, JSON or Newick)")
        return _parse(cls, text, path, fmt or _sniff(text), on_multiple_parents)
    except ValueError as e:
        raise TreeError(str(e) if str(path) in str(e) else f"{path}: {e}") from None


def _parse(cls: type[LabelTree], text: str, path: Path, fmt: str, on_multiple_parents: str) -> LabelTree:
    if fmt == "edges":
        return _from_edges_text(cls, text, path, on_multiple_parents)
    if fmt == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TreeError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
        except RecursionError:
            raise TreeError(
                f"{path}: JSON nested deeper than Python's parser allows; write a deep tree in "
                'the flat form {"child": "parent", ...} (or as an edge list), which has no depth limit'
            ) from None
        return _from_json(cls, data, str(path))
    return _from_newick(cls, text, str(path))


def _from_edges_text(cls: type[LabelTree], text: str, path: Path, on_multiple_parents: str) -> LabelTree:
    """Edge lines ``parent child [weight]``, whitespace separated; in a ``.csv`` file comma
    separated as a spreadsheet writes them (quoted fields, names with spaces, an optional header
    row ``parent,child[,weight]``, which is skipped)."""
    edges: list[tuple[Any, ...]] = []
    where: list[str] = []
    is_csv = path.suffix.lower() == ".csv"
    line_form = "'parent,child[,weight]'" if is_csv else "'parent child [weight]'"
    form = line_form + (" (comma separated: a .csv file)" if is_csv else " (whitespace separated)")
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = [f.strip() for f in next(csv.reader([line]))] if is_csv else line.split()
        loc = f"{path}:{lineno}"
        if is_csv and not edges and [p.lower() for p in parts] in (["parent", "child"],
                                                                    ["parent", "child", "weight"]):
            continue  # the header row
        if line.startswith("("):
            raise TreeError(f"{loc}: this looks like a Newick tree, not an edge list ('parent "
                            "child [weight]' lines); give the file a .nwk suffix")
        if len(parts) not in (2, 3) or not all(parts):
            raise TreeError(f"{loc}: expected {form}, got {raw.strip()!r}")
        if not is_csv and (parts[0].endswith(",") or (len(parts) == 3 and parts[1].endswith(","))):
            raise TreeError(f"{loc}: expected 'parent child [weight]' separated by whitespace only, got "
                            f"{raw.strip()!r}; remove the commas (or name the file .csv)")
        if len(parts) == 3:
            try:
                w = parse_number(parts[2])
            except ValueError:
                raise TreeError(
                    f"{loc}: expected {line_form} with a numeric weight, got "
                    f"{raw.strip()!r}; write a plain number such as 1.5 (no '_' separators)"
                ) from None
            edges.append((parts[0], parts[1], w))
        else:
            edges.append((parts[0], parts[1]))
        where.append(loc)
    if not edges:
        raise TreeError(f"empty tree: {path} holds no edges ({form} lines)")
    return cls._from_edge_list(edges, on_multiple_parents, where)


def _from_json(cls: type[LabelTree], data: Any, src: str) -> LabelTree:
    if not isinstance(data, dict) or not data:
        raise TreeError(f"{src}: expected a non-empty JSON object describing a tree")
    vals = list(data.values())
    extra = sorted(set(data) - {"parents", "weights", "levels"})
    parents = data.get("parents")  # a {child: parent} map (string values: no nested subtree has them)
    if extra and isinstance(parents, dict) and (
            "weights" in data or "levels" in data or any(isinstance(v, str) for v in parents.values())):
        raise TreeError(f'{src}: unknown key {extra[0]!r} beside "parents"; a {{"parents": ...}} tree '
                        'holds only "parents", "weights" and "levels"')
    if (
        set(data) <= {"parents", "weights", "levels"}
        and "parents" in data
        and (
            "weights" in data
            or "levels" in data
            or (isinstance(data["parents"], dict) and any(isinstance(v, str) for v in data["parents"].values()))
        )
    ):
        parents, weights = data["parents"], data.get("weights", {})
        if not isinstance(parents, dict) or not isinstance(weights, dict):
            raise TreeError(f"{src}: 'parents' and 'weights' must be JSON objects")
        tree = _from_flat(cls, parents, weights, src)
        if "levels" not in data:
            return tree
        levels = data["levels"]
        ok = isinstance(levels, list) and all(
            isinstance(x, dict)
            and set(x) == {"name", "nodes"}
            and isinstance(x["name"], str)
            and isinstance(x["nodes"], list)
            and all(isinstance(y, str) for y in x["nodes"])
            for x in levels
        )
        if not ok:
            raise TreeError(
                f'{src}: "levels" must be a list of {{"name": str, "nodes": [str, ...]}} objects, finest first'
            )
        if not levels:
            raise TreeError(f'{src}: "levels" is empty; list at least one level (internal nodes, '
                            'finest first), or leave "levels" out for the tree\'s depths')
        spec = [(x["name"], x["nodes"]) for x in levels]
        parent = {n: tree.parent(n) for n in tree.nodes}
        weight = {n: tree.weight(n) for n, p in parent.items() if p is not None}
        return cls(parent, weight, leaves=tree.leaves, level_spec=spec)
    if all(v is None or isinstance(v, str) for v in vals) and any(isinstance(v, str) for v in vals):
        return _from_flat(cls, data, {}, src)
    # nested form
    edges: list[tuple[str, str]] = []
    roots: list[str] = []

    # depth-first, with an explicit stack (any depth), children in file order
    todo: list[tuple[Any, Any, str | None]] = [(k, v, None) for k, v in reversed(data.items())]
    while todo:
        key, sub, parent = todo.pop()
        name = _check_name(key, f"{src}: node name")
        if parent is None:
            roots.append(name)
        else:
            edges.append((parent, name))
        if sub is None:
            continue
        if isinstance(sub, dict):
            items = list(sub.items())
        elif isinstance(sub, list):
            items = []
            for item in sub:
                items.extend(item.items() if isinstance(item, dict) else [(item, None)])
        else:
            raise TreeError(
                f"{src}: the value under {name!r} is {sub!r}; in a nested tree each value must "
                "be an object, a list of names, or null"
            )
        todo.extend((k, v, name) for k, v in reversed(items))

    if len(roots) > 1:
        raise TreeError(f"several roots: {_listed(roots)} are top-level keys in {src}; nest them under one root")
    if not edges:
        return cls({roots[0]: None})
    return cls._from_edge_list(edges, "error", None)


def _from_flat(cls: type[LabelTree], parents: dict[str, Any], weights: dict[str, Any], src: str) -> LabelTree:
    for c, p in parents.items():
        if p is not None and not isinstance(p, str):
            raise TreeError(f"{src}: parent of {c!r} is {p!r}; a flat map needs a name or null per child")
    return cls.from_parents(parents, weights)


def _from_newick(cls: type[LabelTree], text: str, src: str) -> LabelTree:
    tokens = _newick_tokens(text, src)
    opened, closed = (sum(kind == p for kind, _ in tokens) for p in "()")
    if opened != closed:  # before any other message, which a missing ')' would only garble
        fix = "add the missing ')'" if opened > closed else "remove the extra ')' (or add its '(')"
        raise TreeError(f"{src}: unbalanced parentheses in Newick text: {opened} '(' but {closed} "
                        f"')'; {fix}")
    # node = [name | None, length | None, children]
    root: list[Any] = [None, None, []]
    cur = root
    stack: list[list[Any]] = []
    i = 0
    done = False
    while i < len(tokens):
        kind, val = tokens[i]
        if done:
            raise TreeError(f"{src}: text after the closing ';' of the Newick tree")
        if kind == "(":
            child: list[Any] = [None, None, []]
            cur[2].append(child)
            stack.append(cur)
            cur = child
        elif kind == ",":
            if not stack:
                raise TreeError(f"{src}: ',' outside parentheses in Newick text")
            child = [None, None, []]
            stack[-1][2].append(child)
            cur = child
        elif kind == ")":
            if not stack:
                raise TreeError(f"{src}: unbalanced ')' in Newick text")
            cur = stack.pop()
        elif kind == ":":
            if i + 1 >= len(tokens) or tokens[i + 1][0] != "label":
                raise TreeError(f"{src}: ':' must be followed by a branch length in Newick")
            try:
                cur[1] = parse_number(tokens[i + 1][1])
            except ValueError:
                raise TreeError(f"{src}: branch length {tokens[i + 1][1]!r} is not a number; write "
                                "a plain number such as 1.5 (no '_' separators)") from None
            i += 1
        elif kind == ";":
            if stack:
                raise TreeError(f"{src}: unbalanced '(' in Newick text (missing ')')")
            done = True
        else:  # label
            if cur[0] is not None:
                raise TreeError(f"{src}: two names {cur[0]!r} and {val!r} for one Newick node; "
                                "separate siblings with ',' or close their group with ')'")
            cur[0] = val
        i += 1
    if stack:
        raise TreeError(f"{src}: unbalanced '(' in Newick text (missing ')')")
    if not root[2] and root[0] is None:
        raise TreeError(f"empty tree: {src} holds no Newick tree")
    # name unnamed internal nodes, check leaves are named
    taken: set[str] = set()
    todo = [root]
    while todo:
        n = todo.pop()
        if n[0] is not None:
            taken.add(n[0])
        todo.extend(n[2])
    counter = 0
    parent: dict[str, str | None] = {}
    weight: dict[str, float] = {}
    todo2: list[tuple[list[Any], str | None]] = [(root, None)]
    while todo2:
        n, par = todo2.pop()
        if n[0] is None:
            if not n[2]:
                raise TreeError(f"{src}: a Newick leaf has no name (child of {par!r}); every leaf needs one")
            counter += 1
            while f"_node{counter}" in taken:
                counter += 1
            n[0] = f"_node{counter}"
        name = _check_name(n[0])
        if name in parent:
            raise TreeError(f"duplicate node names: {name!r} appears twice in {src}; names must be unique")
        parent[name] = par
        if par is not None:
            weight[name] = 1.0 if n[1] is None else n[1]
        todo2.extend((c, name) for c in reversed(n[2]))
    return cls(parent, weight)


def _newick_tokens(text: str, src: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch == "[":
            j = text.find("]", i)
            if j < 0:
                raise TreeError(f"{src}: unclosed '[' comment in Newick text")
            i = j + 1
        elif ch in "(),:;":
            tokens.append((ch, ch))
            i += 1
        elif ch == "'":
            buf = []
            i += 1
            while True:
                if i >= n:
                    raise TreeError(f"{src}: unclosed quote in Newick text")
                if text[i] == "'":
                    if i + 1 < n and text[i + 1] == "'":
                        buf.append("'")
                        i += 2
                        continue
                    i += 1
                    break
                buf.append(text[i])
                i += 1
            tokens.append(("label", "".join(buf)))
        else:
            j = i
            while j < n and not text[j].isspace() and text[j] not in "(),:;[']":
                j += 1
            tokens.append(("label", text[i:j]))
            i = j
    return tokens


# ---------------------------------------------------------------------- writing
def write_tree(tree: LabelTree, path: str | os.PathLike[str], format: str | None = None) -> None:
    """Write ``tree`` so that :func:`read_tree` reads it back (see :meth:`LabelTree.to_file`)."""
    path = Path(path)
    fmt = _format_of(path, format)
    if fmt is None:
        raise TreeError(f"cannot tell which tree format to write to {str(path)!r} from its suffix; "
                        "pass format='edges', 'json' or 'newick', or name it .txt, .json or .nwk")
    weighted = any(tree.weight(n) != 1.0 for n in tree.nodes if n != tree.root)
    if fmt == "edges":
        text = _edges_text(tree, weighted)
    elif fmt == "json":
        text = _json_text(tree, weighted)
    else:
        text = _newick_text(tree, weighted)
    tmp = path.with_name(path.name + ".tmp")
    try:  # written beside and moved in: whole or not at all, and a symlink is replaced, not followed
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _edges_text(tree: LabelTree, weighted: bool) -> str:
    bad = [n for n in tree.nodes if re.search(r"\s|#", n)]
    if bad:
        raise TreeError(
            f"node names {_listed(bad)} contain whitespace or '#', which the edges format "
            "cannot hold; write JSON or Newick instead"
        )
    if len(tree.nodes) == 1:
        raise TreeError(f"the single-node tree {tree.root!r} has no edge to write; use JSON or Newick")
    lines = ["# parent child" + (" weight" if weighted else "")]
    for c in _edge_order(tree):
        lines.append(f"{tree.parent(c)}\t{c}" + (f"\t{tree.weight(c)!r}" if weighted else ""))
    return "\n".join(lines) + "\n"


def _json_text(tree: LabelTree, weighted: bool) -> str:
    kids = _dfs_children(tree)
    level_spec = tree._level_spec  # named levels (from_levels / JSON levels), which only JSON keeps
    deep = max(tree.depth(n) for n in tree.leaves) > NESTED_JSON_MAX_DEPTH
    if kids is None or weighted or level_spec is not None or deep:
        order = _edge_order(tree)
        parents: dict[str, str | None] = {c: tree.parent(c) for c in order}
        parents[tree.root] = None
        obj: Any = {"parents": parents}
        if weighted:
            obj["weights"] = {c: tree.weight(c) for c in order}
        if level_spec is not None:
            obj["levels"] = [{"name": a, "nodes": b} for a, b in level_spec]
    else:
        sub: dict[str, dict[str, Any]] = {n: {} for n in tree.nodes}
        for n in tree.nodes:
            for c in kids[n]:
                sub[n][c] = sub[c]
        obj = {tree.root: sub[tree.root]}
    return json.dumps(obj, indent=1) + "\n"


def _newick_text(tree: LabelTree, weighted: bool) -> str:
    kids = _dfs_children(tree)
    if kids is None:
        raise TreeError(
            "the leaf order is not a depth-first order of the tree (the leaves under some "
            "node are not contiguous), which Newick cannot hold; write edges or JSON"
        )

    def label(n: str) -> str:
        if re.fullmatch(r"[^\s()\[\]':;,]+", n):
            return n
        return "'" + n.replace("'", "''") + "'"

    def tail(n: str) -> str:
        return label(n) + (f":{tree.weight(n)!r}" if weighted and n != tree.root else "")

    # depth-first with an explicit stack (any depth): "(" before the children, "," between
    # them, ")" + label after them
    out: list[str] = []
    stack: list[tuple[str, int]] = [(tree.root, 0)]
    while stack:
        n, k = stack.pop()
        if k == len(kids[n]):
            out.append((")" if kids[n] else "") + tail(n))
            continue
        out.append("(" if k == 0 else ",")
        stack.append((n, k + 1))
        stack.append((kids[n][k], 0))
    return "".join(out) + ";\n"


def _edge_order(tree: LabelTree) -> list[str]:
    """Children of all edges, ordered so that leaves first appear in class-id order."""
    out: list[str] = []
    seen: set[str] = {tree.root}
    for leaf in tree.leaves:
        path = []
        n: str | None = leaf
        while n is not None and n not in seen:
            path.append(n)
            seen.add(n)
            n = tree.parent(n)
        out.extend(reversed(path))
    return out


def _dfs_children(tree: LabelTree) -> dict[str, list[str]] | None:
    """Children ordered by their smallest leaf id, or None if leaves are not DFS-ordered."""
    first: dict[str, int] = {}
    for i, leaf in enumerate(tree.leaves):
        n: str | None = leaf
        while n is not None and n not in first:
            first[n] = i
            n = tree.parent(n)
    kids = {n: sorted(tree.children(n), key=first.__getitem__) for n in tree.nodes}
    seq: list[str] = []
    stack = [tree.root]
    while stack:
        n = stack.pop()
        if not kids[n]:
            seq.append(n)
        stack.extend(reversed(kids[n]))
    return kids if seq == tree.leaves else None
