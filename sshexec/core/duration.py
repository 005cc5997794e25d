"""Times as people write them: `90` or `90s`, `5m`, `1h`, `1h30m`, `2d` (a number alone is seconds).

Every time sshexec reads (a runbook's timeout, pause and delay, the inventory's
lock_stale and connect_timeout, --lock-wait) goes through parse_duration, so one
spelling works everywhere and every error says the unit.
"""

from __future__ import annotations

import math
import re

UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")
ACCEPTED = "seconds (90) or a duration with a unit (90s, 5m, 1h, 1h30m)"


def parse_duration(value: object, what: str = "the time", *, minimum: float = 0, maximum: float = math.inf) -> float:
    """`value` in seconds; ValueError naming `what`, the accepted forms and the bounds otherwise."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{what} must be {ACCEPTED}, not {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        try:
            seconds = float(text)
        except ValueError:
            parts = _PART.findall(text)
            if not text or not parts or _PART.sub("", text).strip():
                raise ValueError(f"{what} must be {ACCEPTED}, not {value!r}") from None
            seconds = sum(float(n) * UNITS[unit] for n, unit in parts)
    else:
        raise ValueError(f"{what} must be {ACCEPTED}, not {value!r}")
    if not math.isfinite(seconds) or not minimum <= seconds <= maximum:
        top = "" if maximum == math.inf else f" and {format_seconds(maximum)}"
        shown = value if isinstance(value, str) else f"{seconds:g}s"
        raise ValueError(f"{what} must be between {format_seconds(minimum)}{top}, not {shown}")
    return seconds


def format_seconds(seconds: float) -> str:
    """90 -> '90s', 300 -> '5m', 3600 -> '1h', 5400 -> '1h30m': the shortest exact spelling."""
    if seconds < 60 or seconds != int(seconds):
        return f"{seconds:g}s"
    out, left = "", int(seconds)
    for unit in ("d", "h", "m", "s"):
        size = int(UNITS[unit])
        if left >= size:
            out += f"{left // size}{unit}"
            left %= size
    return out
