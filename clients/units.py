"""Human-readable quantities: 1.3B, 100B, 1M, 5e10, 2.5e21, 512Ki."""

import math
import re

_SUFFIX = {
    "": 1.0, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12, "p": 1e15,
    "ki": 2.0**10, "mi": 2.0**20, "gi": 2.0**30, "ti": 2.0**40,
}
_QUANTITY = re.compile(r"^\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)\s*([a-z]{0,2})\s*$", re.I)


def parse_quantity(text: str) -> float:
    """'1.3B' -> 1.3e9. Suffixes K, M, B (=G), T, P are powers of 1000; Ki, Mi, Gi, Ti of 1024."""
    match = _QUANTITY.match(text)
    if not match or match.group(2).lower() not in _SUFFIX:
        raise ValueError(f"cannot read {text!r} as a number (examples: 1.3B, 100B, 1M, 5e10)")
    value = float(match.group(1)) * _SUFFIX[match.group(2).lower()]
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value


def format_quantity(value: float) -> str:
    """1.3e9 -> '1.3B', for tables."""
    for suffix, scale in (("P", 1e15), ("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"
