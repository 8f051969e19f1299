"""YAML as users write it: :func:`load_yaml` reads ``1e-3`` as a number.

PyYAML follows YAML 1.1, whose float pattern needs a decimal point, so ``yaml.safe_load("1e-3")``
is the *string* ``'1e-3'`` (and ``lr: 1e-3`` in a config file would be refused as "not a
number"). :func:`load_yaml` is ``yaml.safe_load`` with one more float form: digits, an optional
point, and an exponent (``1e-3``, ``1E5``, ``-2e+10``, ``1e300``; ``1e999`` overflows to ``inf``
as ``float`` does, which the value checks then refuse). Everything else resolves as before:
``3`` is an int, ``abc`` and ``inf`` are strings, ``.inf`` / ``.nan`` are floats.

Two YAML 1.1 leftovers are taken out, as YAML 1.2 did: sexagesimal numbers (``1:30`` was 90,
``1:00`` 60) and leading-zero octal (``010`` was 8) are strings, which the value checks then
refuse as "not a number" instead of training with a number nobody typed. A mapping that repeats
a key (``lr: 0.1`` then ``lr: 0.2``: the last one won) is refused, naming the key and its lines.

Every YAML the package reads from a user (``--config`` files, ``KEY=VALUE`` options) goes
through :func:`load_yaml`; a ``KEY=VALUE`` value through :func:`load_value`. Imports nothing from
the package: any module may use it.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

__all__ = ["load_value", "load_yaml"]

# an exponent makes a number a float even without a decimal point (YAML 1.2, JSON, Python)
_EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


# YAML 1.1 numbers that YAML 1.2 dropped: sexagesimal (1:30 = 90) and leading-zero octal (010 = 8)
_OLD_NUMBER = re.compile(r"^(?:[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?|[-+]?0[0-7_]+)$")


class _Loader(yaml.SafeLoader):
    """SafeLoader whose implicit float resolver also accepts ``1e-3``, reads sexagesimal and
    leading-zero octal numbers as strings, and refuses repeated mapping keys (module docstring)."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict:  # noqa: D102
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: SafeLoader's own error follows
                    continue
                if first is not None:
                    lines = f"line {line}" if first == line else f"lines {first} and {line}"
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} is given twice ({lines}); keep one", None)
                seen[key] = line
        return super().construct_mapping(node, deep)


# own copy of the resolver table (add_implicit_resolver copies it on first use), then the extra
# float form, consulted before SafeLoader's (int's pattern cannot match an 'e', so order is moot)
_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _first in "-+0123456789":
    _Loader.yaml_implicit_resolvers.setdefault(_first, []).insert(
        0, ("tag:yaml.org,2002:float", _EXPONENT_FLOAT))
    _Loader.yaml_implicit_resolvers[_first].insert(0, ("tag:yaml.org,2002:str", _OLD_NUMBER))


def load_yaml(text: str) -> Any:
    """``yaml.safe_load(text)``, except that ``1e-3``-style numbers are floats. O(len(text)).

    Raises:
        yaml.YAMLError: ``text`` is not valid YAML (as ``yaml.safe_load``).
    """
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


def load_value(text: str) -> Any:
    """One ``KEY=VALUE`` value: :func:`load_yaml`, except that text YAML would read as a block
    list or mapping (``-`` is ``[None]``, ``- 3`` is ``[3]``, ``a: 1`` is ``{'a': 1}``) stays the
    text itself, so a value check names what the user typed; lists and mappings are written in
    flow style (``[4, 5]``, ``{a: 1}``). Text that is not YAML is the text itself. O(len(text)).
    """
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError:
        return text
    if isinstance(node, yaml.CollectionNode) and not node.flow_style:
        return text
    return load_yaml(text)
