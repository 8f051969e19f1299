"""The CLI's refusal as every bad-input test checks it (one helper for all test files)."""

from __future__ import annotations


def one_line_error(capsys, code: int, *needles: str, rc: int = 2, prefix: str = "otcpcc") -> str:
    """Assert that the command returned ``rc`` (2: a refusal) and wrote exactly one line to stderr,
    starting with ``prefix`` (argparse's own refusals read ``otcpcc <command>: error: ...``, ours
    ``otcpcc: error: ...``), with no traceback or warning, naming every one of ``needles``;
    return that line."""
    assert code == rc
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "Warning" not in err and len(err.splitlines()) == 1, err
    assert err.startswith(prefix) and all(n in err for n in needles), err
    return err


def own_error(capsys, code: int, *needles: str) -> str:
    """:func:`one_line_error` of otcpcc's own refusals (not argparse's): ``otcpcc: error: ...``."""
    return one_line_error(capsys, code, *needles, prefix="otcpcc: error: ")
