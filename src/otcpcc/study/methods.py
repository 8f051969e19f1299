"""What ``otcpcc compare --methods`` trains: entries such as ``none``, ``hxe``, ``soft``, ``l2``,
``fastft`` or ``hxe+fastft``.

An entry names a task loss (``ce``, ``hxe``, ``soft``; ``runs.config.METHODS``), a CPCC distance
(any name or alias of ``runs.config.DISTANCE_ALIASES``; a distance alone means cross-entropy +
λ·CPCC), or one of each joined by ``+``. ``none`` (aliases ``ce``, ``flat``) is plain
cross-entropy, the baseline of every verdict.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..runs.config import DISTANCE_ALIASES, METHODS, ConfigError

# how the report names them in sentences
_LOSS_NAMES = {"ce": "flat CE", "hxe": "HXE", "soft": "soft-label CE"}
_DISTANCE_NAMES = {"l2": "ℓ2-CPCC", "emd": "EMD-CPCC", "sinkhorn": "Sinkhorn-CPCC",
                   "swd": "SWD-CPCC", "fastft": "FastFT-CPCC"}


@dataclass(frozen=True)
class MethodSpec:
    """One compared method: ``name`` (canonical entry, the run folder and summary ``method``),
    ``method`` (the task loss: ce | hxe | soft) and ``distance`` (CPCC distance or ``none``)."""

    name: str
    method: str
    distance: str

    @property
    def label(self) -> str:
        """Human name, e.g. ``HXE``, ``FastFT-CPCC``, ``HXE + FastFT-CPCC``, ``flat CE``."""
        if self.distance == "none":
            return _LOSS_NAMES[self.method]
        cpcc = _DISTANCE_NAMES.get(self.distance, f"{self.distance}-CPCC")
        return cpcc if self.method == "ce" else f"{_LOSS_NAMES[self.method]} + {cpcc}"


def _bad(entry: str) -> ConfigError:
    return ConfigError(
        f"unknown method {entry!r}; use none, hxe, soft, a CPCC distance "
        f"({', '.join(sorted(set(DISTANCE_ALIASES.values()) - {'none'}))}) or a loss+distance "
        "pair such as hxe+fastft")


def resolve_method(entry: str) -> MethodSpec:
    """Parse one entry (case-insensitive); raises :class:`ConfigError` naming it and the fix."""
    losses, dists = [], []
    for part in (p.strip().lower() for p in str(entry).split("+")):
        if part in METHODS and part != "ce":
            losses.append(part)
        elif part in DISTANCE_ALIASES:  # ce / flat / none add nothing
            dists += [DISTANCE_ALIASES[part]] if DISTANCE_ALIASES[part] != "none" else []
        else:
            raise _bad(entry)
    if len(losses) > 1 or len(dists) > 1:
        raise _bad(entry)
    method = losses[0] if losses else "ce"
    distance = dists[0] if dists else "none"
    name = "+".join(n for n in (method, distance) if n not in ("ce", "none")) or "none"
    return MethodSpec(name, method, distance)


def resolve_methods(entries: Sequence[str]) -> list[MethodSpec]:
    """Parse every entry, in order; a method listed twice (``none,none``, or ``fastft,fft``: two
    names of one method) is refused, naming the entries."""
    out: dict[str, MethodSpec] = {}
    seen: dict[str, list[str]] = {}
    for entry in entries:
        spec = resolve_method(entry)
        out.setdefault(spec.name, spec)
        seen.setdefault(spec.name, []).append(str(entry))
    twice = {name: given for name, given in seen.items() if len(given) > 1}
    if twice:
        what = "; ".join(f"{name} {len(given)} times ({', '.join(given)})"
                         for name, given in twice.items())
        raise ConfigError(f"--methods lists {what}; name each method once, e.g. --methods "
                          f"{','.join(out)}")
    if not out:
        raise ConfigError("no methods to compare; pass e.g. --methods none,hxe,soft,l2,fastft")
    return list(out.values())
