"""YAML as users write it: :func:`load_yaml` reads ``1e-3`` as a number.

PyYAML follows YAML 1.1, whose float pattern needs a decimal point, so ``yaml.safe_load("1e-3")``
is the *string* ``'1e-3'`` (and ``lr: 1e-3`` in a config file would be refused as "not a
number"). :func:`load_yaml` is ``yaml.safe_load`` with one more float form: digits, an optional
point, and an exponent (``1e-3``, ``1E5``, ``-2e+10``, ``1e300``; ``1e999`` overflows to ``inf``
as ``float`` does, which the value checks then refuse). Everything else resolves as before:
``3`` is an int, ``abc`` and ``inf`` are strings, ``.inf`` / ``.nan`` are floats.

Every YAML the package reads from a user (``--config`` files, ``KEY=VALUE`` options) goes
through :func:`load_yaml`. Imports nothing from the package: any module may use it.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

__all__ = ["load_yaml"]

# an exponent makes a number a float even without a decimal point (YAML 1.2, JSON, Python)
_EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


class _Loader(yaml.SafeLoader):
    """SafeLoader whose implicit float resolver also accepts ``1e-3`` (see module docstring)."""


# own copy of the resolver table (add_implicit_resolver copies it on first use), then the extra
# float form, consulted before SafeLoader's (int's pattern cannot match an 'e', so order is moot)
_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _first in "-+0123456789":
    _Loader.yaml_implicit_resolvers.setdefault(_first, []).insert(
        0, ("tag:yaml.org,2002:float", _EXPONENT_FLOAT))


def load_yaml(text: str) -> Any:
    """``yaml.safe_load(text)``, except that ``1e-3``-style numbers are floats. O(len(text)).

    Raises:
        yaml.YAMLError: ``text`` is not valid YAML (as ``yaml.safe_load``).
    """
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
