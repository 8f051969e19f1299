"""Read a user's text file (tree, cost matrix, config, hierarchy): the one place that decodes one.

Every text file the package reads from a path given by the user goes through :func:`read_text`,
so that a binary, non-UTF-8 or misplaced file gives one line naming the file and the format that
was expected, instead of Python's ``'utf-8' codec can't decode byte 0x83 in position 0``.
Imports nothing from the package: any module may use it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["parse_number", "read_text"]

# a plain decimal number, as written in a CSV or tree file: sign, ASCII digits, point, exponent;
# also inf / infinity / nan, so that callers can name them as not finite
_NUMBER = re.compile(r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf(?:inity)?|nan)",
                     re.IGNORECASE)

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


def parse_number(text: str) -> float:
    """``text`` read as a number, strictly: what :func:`float` reads, less its Python-only
    leniencies, which in a data file are typos or a foreign format: digit-group underscores
    (``1_000``), surrounding whitespace, non-ASCII digits (``'١'``, full-width ``'１'``).
    E.g. ``"1.5e3"`` -> 1500.0, ``"-2"`` -> -2.0, ``"nan"`` -> nan; ``"1_000"``, ``" 1"``,
    ``"1,5"`` raise.

    Raises:
        ValueError: ``text`` is not such a number (the caller names where it stood).
    """
    if not isinstance(text, str) or _NUMBER.fullmatch(text) is None:
        raise ValueError(f"not a number: {text!r}")
    return float(text)
