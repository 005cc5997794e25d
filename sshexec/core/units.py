"""Sizes as people write them (`20G`, `512M`: powers of 1024) and as they read them."""

from __future__ import annotations

import re

_SIZE = re.compile(r"(?i)^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)\s*$")


def parse_size(text: str) -> int:
    """'10G', '512M', '1.5TiB', '100000' (bytes) -> bytes; powers of 1024. ValueError if not a size."""
    m = _SIZE.match(text or "")
    if not m:
        raise ValueError(f"{text!r} is not a size: write a number with K, M, G or T (powers of 1024), e.g. 20G")
    unit = "bkmgtp".index((m.group(2) or "b").lower())
    return int(float(m.group(1)) * 1024**unit)


def human_size(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
