"""A step's attempts: `retries:` carried out, each attempt a StepResult, the last one kept.

plan.retry_wanted() decides whether an attempt's result asks for another;
core/retry.py waits between them (backoff, jitter, and a cancel that ends the wait).
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from typing import Callable

from ..config.release import Retries
from ..core.retry import retry
from ..core.status import CANCELLED
from ..errors import Cancelled
from ..step.result import StepResult
from . import policy as plan


@dataclass(frozen=True)
class Attempt:
    """Attempt `attempt` of `attempts` ended badly; the next one starts in `wait` seconds (the "attempt" event)."""

    step: str
    worker: str
    attempt: int
    attempts: int
    wait: float
    status: str
    message: str | None


class _Again(Exception):
    """An attempt whose result asks for another one (retry() retries on exceptions)."""

    def __init__(self, result: StepResult):
        super().__init__(result.message or result.status)
        self.result = result


def tries(
    policy: Retries | None,
    once: Callable[[int, list[str]], StepResult],
    *,
    cancel: threading.Event,
    on_retry: Callable[[Attempt], None] = lambda a: None,
) -> StepResult:
    """`once(attempt, workers where an attempt failed so far)` until it succeeds or `policy` says stop.

    The result is the last attempt's, numbered (`attempt`, `attempts`), with the
    ones before it in `earlier`. A cancel while waiting makes it a cancelled result.
    """
    if policy is None:
        return once(1, [])
    earlier: list[StepResult] = []

    def attempt() -> StepResult:
        n = len(earlier) + 1
        r = dataclasses.replace(once(n, [e.worker for e in earlier]), attempt=n, attempts=policy.attempts)
        if n < policy.attempts and plan.retry_wanted(r.status, r.error, policy.on):
            earlier.append(r)
            raise _Again(r)
        return r

    def announce(n: int, exc: BaseException, wait: float) -> None:
        r = exc.result  # type: ignore[attr-defined]
        on_retry(Attempt(r.step, r.worker, n, policy.attempts, wait, r.status, r.message))

    try:
        final = retry(
            attempt, attempts=policy.attempts, delay=policy.delay, backoff=policy.backoff,
            retry_if=lambda exc: isinstance(exc, _Again), cancel=cancel, on_retry=announce,
        )  # fmt: skip
    except _Again as exc:  # the run was cancelled right after this attempt: it stands
        final = earlier.pop() if earlier and earlier[-1] is exc.result else exc.result
    except Cancelled:  # while waiting for the next attempt
        if not earlier:
            raise
        last = earlier.pop()
        message = f"cancelled before attempt {last.attempt + 1}/{policy.attempts} (attempt {last.attempt}: {last.message})"
        final = dataclasses.replace(last, status=CANCELLED, exit_code=None, message=message)
    return dataclasses.replace(final, earlier=tuple(earlier))
