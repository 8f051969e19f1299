"""Read a user's text file (tree, cost matrix, config, hierarchy): the one place that decodes one.

Every text file the package reads from a path given by the user goes through :func:`read_text`,
so that a binary, non-UTF-8 or misplaced file gives one line naming the file and the format that
was expected, instead of Python's ``'utf-8' codec can't decode byte 0x83 in position 0``.
Imports nothing from the package: any module may use it.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["read_text"]

# byte-order marks of the wide encodings, UTF-32 first (its little-endian mark starts like UTF-16's)
_WIDE_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"),
              (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16"))


def read_text(path: str | os.PathLike[str], expected: str) -> str:
    """The whole file decoded as UTF-8 (a leading byte-order mark is dropped).

    Args:
        path: the file.
        expected: what the file should hold, for the message, e.g. ``"a CSV cost matrix"``.

    Raises:
        ValueError: the file is not UTF-8 text (UTF-16/32 text is named as such, from its
            byte-order mark) or holds NUL bytes (binary), naming it and ``expected``.
        FileNotFoundError / IsADirectoryError: with a message naming the file and ``expected``.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{p} not found; pass the path of {expected}") from None
    except IsADirectoryError:
        raise IsADirectoryError(f"{p} is a directory; pass the path of {expected}") from None
    for bom, encoding in _WIDE_BOMS:  # saved as UTF-16/32 (Windows "Unicode"): not readable as UTF-8
        if raw.startswith(bom):
            raise ValueError(f"{p} is {encoding} text, not UTF-8 (it starts with a {encoding} "
                             f"byte-order mark); expected {expected}: re-save it as UTF-8")
    start = 3 if raw.startswith(b"\xef\xbb\xbf") else 0  # a byte-order mark (Excel's CSVs)
    try:
        text = raw[start:].decode("utf-8")
    except UnicodeDecodeError as e:
        byte, at = e.object[e.start], start + e.start
        raise ValueError(f"{p} is not UTF-8 text (byte 0x{byte:02x} at offset {at}); "
                         f"expected {expected}; is it the right file?") from None
    if "\x00" in text:
        raise ValueError(f"{p} looks binary (it holds a NUL character); expected {expected}; "
                         "is it the right file?")
    return text
