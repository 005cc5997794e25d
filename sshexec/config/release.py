"""What a runbook says about releasing a step: `rolling:` and `retries:`, and the N-or-"P%" shares they use.

These are the values the runbook's models produce; the decisions taken from
them (batches, failure limits, whether to try again) live in run/policy.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..core.retry import delays

# -- N or "P%" of a step's workers ---------------------------------------------------------


@dataclass(frozen=True)
class Share:
    """A count of workers, or a percentage of them (`percent` set, `count` None)."""

    count: int | None = None
    percent: int | None = None

    def __str__(self) -> str:
        return f"{self.percent}%" if self.percent is not None else str(self.count)

    def at_least_one(self, total: int) -> int:
        """A batch size: a percentage rounds up, and a batch holds at least one worker."""
        if self.percent is None:
            return max(1, min(self.count or 1, total))
        return max(1, math.ceil(self.percent * total / 100))

    def rounded_down(self, total: int) -> int:
        """A failure limit: a percentage rounds down (10% of 4 workers tolerates none)."""
        if self.percent is None:
            return self.count or 0
        return self.percent * total // 100


def parse_share(value: object, *, minimum: int) -> Share:
    """`N` (at least `minimum`) or `"P%"` (from `minimum`% to 100%); ValueError saying what is accepted."""
    accepted = f'a whole number of workers (at least {minimum}) or a percentage like "25%" ({minimum}% to 100%)'
    if isinstance(value, bool):
        raise ValueError(f"use {accepted}, not {value!r}")
    if isinstance(value, int):
        if value < minimum:
            raise ValueError(f"use {accepted}, not {value}")
        return Share(count=value)
    if isinstance(value, str):
        text = value.strip()
        digits = text[:-1].strip()
        if text.endswith("%") and digits.isdigit():
            percent = int(digits)
            if minimum <= percent <= 100:
                return Share(percent=percent)
            raise ValueError(f"use {accepted}, not {value!r}")
        if text.isdigit():
            return parse_share(int(text), minimum=minimum)
    raise ValueError(f"use {accepted}, not {value!r}")


# -- the keys of a step ------------------------------------------------------------------------


@dataclass(frozen=True)
class Rolling:
    """`rolling:` of a `target: each` step. `batch` None: every worker at once."""

    batch: Share | None = None
    max_failures: Share = Share(count=0)
    pause: float = 0.0
    order: str = "inventory"


@dataclass(frozen=True)
class Retries:
    """`retries:` of a step: `attempts` in all (the first one included)."""

    attempts: int
    delay: float = 5.0
    backoff: float = 2.0
    on: str = "infrastructure"

    def waits(self) -> list[float]:
        """The waits between attempts, before jitter (retry.delays: the worst case)."""
        return delays(self.attempts, self.delay, self.backoff)
