"""A restricted unpickler for dataset files (CIFAR's python batches) that executes nothing.

Plain pickles can call any importable function while loading, so a tampered dataset file could run
code. :func:`safe_load` builds only

- plain containers: ``dict``, ``list``, ``tuple``, ``set``, ``frozenset``;
- ``bytes``, ``bytearray``, ``str``, ``int``, ``float``, ``complex``, ``bool``, ``None``;
- numpy arrays and scalars of non-object dtypes (numpy's own reconstruction path:
  ``numpy[._]core.multiarray._reconstruct`` applied to ``numpy.ndarray``, ``numpy.dtype``,
  ``numpy[._]core.multiarray.scalar``).

Python 3 pickles of protocol < 3 spell ``bytes`` as ``_codecs.encode(text, "latin1")``; that one
call is allowed with exactly that signature. Any other global (``os.system``, ``builtins.eval``,
a class, ...) raises :class:`UnsafePickleError` naming the file and the global *before* anything is
called. A truncated or corrupt file raises ``ValueError`` naming the file.
"""

from __future__ import annotations

import codecs
import importlib
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["UnsafePickleError", "safe_load", "safe_loads"]


class UnsafePickleError(ValueError):
    """A pickle asked for a global outside the allowed set (nothing was executed)."""


def _numpy_multiarray() -> Any:
    for name in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            return importlib.import_module(name)
        except ImportError:  # pragma: no cover - depends on the numpy version
            continue
    raise ImportError("numpy multiarray module not found")  # pragma: no cover


_MULTIARRAY = _numpy_multiarray()


class _NdarrayToken:
    """Stands for ``numpy.ndarray`` inside a pickle: valid only as ``_reconstruct``'s subtype."""

    def __init__(self, source: str) -> None:
        self.source = source

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise UnsafePickleError(
            f"{self.source}: forbidden call numpy.ndarray(...) in pickle; only numpy's own "
            "array reconstruction is allowed"
        )


def _allowed_globals(source: str) -> dict[tuple[str, str], Any]:
    token = _NdarrayToken(source)

    def reconstruct(subtype: Any, shape: Any, dtype_code: Any) -> np.ndarray:
        if subtype is not token:
            raise UnsafePickleError(
                f"{source}: numpy _reconstruct called with a non-ndarray type {subtype!r}"
            )
        if shape != (0,) or dtype_code not in (b"b", "b"):  # numpy's own pickles, always
            raise UnsafePickleError(
                f"{source}: numpy _reconstruct with shape {shape!r:.60} and dtype "
                f"{dtype_code!r:.60}; numpy pickles start from an empty (0,) byte array"
            )
        return _MULTIARRAY._reconstruct(np.ndarray, shape, dtype_code)

    def dtype(*args: Any) -> np.dtype:
        if not args or not isinstance(args[0], (str, bytes)) or len(args) > 3:
            raise UnsafePickleError(f"{source}: unexpected numpy.dtype arguments {args!r}")
        spec = args[0].decode("ascii") if isinstance(args[0], bytes) else args[0]
        flags = [bool(a) for a in args[1:]]
        dt = np.dtype(spec, *flags)
        if dt.hasobject:
            raise UnsafePickleError(f"{source}: object dtype {spec!r} in pickle is not allowed")
        if dt.itemsize > MAX_ITEMSIZE:
            raise UnsafePickleError(
                f"{source}: numpy dtype {spec!r:.40} of {dt.itemsize} bytes per item; dataset "
                f"dtypes are at most {MAX_ITEMSIZE} bytes (this bounds what a small file allocates)"
            )
        return dt

    def buffer(kind: type) -> Any:
        def make(*args: Any) -> Any:
            if args and not isinstance(args[0], (str, bytes, bytearray, list, tuple)):
                raise UnsafePickleError(
                    f"{source}: {kind.__name__}({args[0]!r:.40}) in pickle; only {kind.__name__} "
                    "of given contents is allowed (an integer would allocate that many bytes)"
                )
            return kind(*args)

        return make

    def scalar(dt: Any, *data: Any) -> Any:
        if not isinstance(dt, np.dtype) or dt.hasobject:
            raise UnsafePickleError(f"{source}: numpy scalar of dtype {dt!r} is not allowed")
        return _MULTIARRAY.scalar(dt, *data)

    def encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        if not isinstance(obj, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
            raise UnsafePickleError(
                f"{source}: _codecs.encode allowed only as (str, 'latin1'), got encoding "
                f"{encoding!r}"
            )
        return codecs.encode(obj, "latin1")

    allowed: dict[tuple[str, str], Any] = {}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = reconstruct
        allowed[(module, "scalar")] = scalar
    allowed[("numpy", "ndarray")] = token
    allowed[("numpy", "dtype")] = dtype
    allowed[("_codecs", "encode")] = encode
    for module in ("builtins", "__builtin__"):
        for name, obj in (
            ("set", set),
            ("frozenset", frozenset),
            ("bytearray", buffer(bytearray)),
            ("bytes", buffer(bytes)),
            ("complex", complex),
        ):
            allowed[(module, name)] = obj
    return allowed


# numpy dtype flags that make items Python objects or pointers (NPY_ITEM_REFCOUNT |
# NPY_ITEM_HASOBJECT = 1, NPY_LIST_PICKLE = 2, NPY_ITEM_IS_POINTER = 4)
_OBJECT_FLAGS = 0x07
MAX_ITEMSIZE = 1 << 16


class _RestrictedUnpickler(pickle._Unpickler):
    """The pure-Python unpickler, so that BUILD can be checked before it runs: a dtype's state
    could otherwise set object flags on a plain dtype (the C unpickler offers no hook)."""

    dispatch = pickle._Unpickler.dispatch.copy()

    def __init__(self, file: io.BufferedIOBase, source: str, encoding: str) -> None:
        super().__init__(file, encoding=encoding)
        self._source = source
        self._allowed = _allowed_globals(source)

    def load_build(self) -> None:
        state, inst = self.stack[-1], self.stack[-2]
        if isinstance(inst, np.dtype):
            flags = state[7] if isinstance(state, tuple) and len(state) > 7 else None
            if not isinstance(flags, int) or flags & _OBJECT_FLAGS:
                raise UnsafePickleError(
                    f"{self._source}: numpy dtype state with flags {flags!r:.40} in pickle; "
                    "object or pointer dtypes are not allowed"
                )
        elif not isinstance(inst, np.ndarray):
            raise UnsafePickleError(
                f"{self._source}: pickle sets the state of a {type(inst).__name__}; only numpy "
                "arrays and dtypes take a state"
            )
        super().load_build()
        if isinstance(inst, (np.dtype, np.ndarray)) and (
            inst.hasobject if isinstance(inst, np.dtype) else inst.dtype.hasobject
        ):
            raise UnsafePickleError(f"{self._source}: object dtype in pickle is not allowed")

    dispatch[pickle.BUILD[0]] = load_build

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self._source}: pickle refers to forbidden global {module}.{name}; only plain "
                "containers, strings, numbers and numpy arrays may be loaded (re-create the file "
                "from trusted data)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self._source}: pickle uses persistent ids (not allowed)")


def _load(file: io.BufferedIOBase, source: str, encoding: str) -> Any:
    try:
        return _RestrictedUnpickler(file, source, encoding).load()
    except UnsafePickleError:
        raise
    except RecursionError as exc:
        raise ValueError(f"{source}: pickle nests too deeply to load ({exc})") from None
    except Exception as exc:  # truncated/corrupt streams raise many types
        raise ValueError(
            f"{source}: corrupt or truncated pickle ({type(exc).__name__}: {exc}); "
            "re-extract the dataset archive"
        ) from None


def safe_load(path: str | Path, encoding: str = "bytes") -> Any:
    """Load a pickle file, allowing only plain data and numpy arrays.

    ``encoding`` decodes Python 2 ``str`` objects (``"bytes"`` keeps them as ``bytes``, which is
    how CIFAR's batches are usually read: keys ``b"data"``, ``b"labels"``).
    Raises :class:`UnsafePickleError` for a forbidden global and ``ValueError`` for a missing,
    truncated or corrupt file; every message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: pickle file not found")
    with path.open("rb") as f:
        return _load(f, str(path), encoding)


def safe_loads(data: bytes, encoding: str = "bytes", source: str = "<bytes>") -> Any:
    """Like :func:`safe_load` for an in-memory pickle; ``source`` names it in errors."""
    return _load(io.BytesIO(data), source, encoding)
