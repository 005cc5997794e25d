"""One way to try again: bounded attempts, exponential backoff, jitter, and cancellation.

    retry(fn, attempts=3, delay=1.0, retry_if=is_transient, cancel=run.cancel)

calls `fn` until it returns, an exception that `retry_if` refuses is raised,
or `attempts` calls have failed (the last exception is raised). Between
attempts it waits `delays(...)[i]`, less jitter: with `jitter` each wait is
drawn uniformly from [wait/2, wait], so that many workers retrying at once do
not hit the same registry or sshd together, and `delays()` stays the worst
case. The sum of `delays(attempts, delay, backoff, max_delay)` bounds the
time spent waiting (the calls themselves take what they take).

A set `cancel` event ends a wait at once with `Cancelled`, and stops any
further attempt.

tenacity would do the same, but not the cancellable wait without a custom
sleep and stop; this is smaller than the adapter would be.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Callable, TypeVar

from ..errors import Cancelled

T = TypeVar("T")


def delays(attempts: int, delay: float, backoff: float = 2.0, max_delay: float | None = None) -> list[float]:
    """The waits between `attempts` calls, before jitter: delay, delay*backoff, ..., each at most max_delay."""
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    if delay < 0 or backoff < 1:
        raise ValueError("delay must be >= 0 and backoff >= 1")
    waits = []
    for i in range(attempts - 1):
        wait = delay * backoff**i
        waits.append(wait if max_delay is None else min(wait, max_delay))
    return waits


def retry(
    fn: Callable[[], T],
    *,
    attempts: int,
    delay: float,
    backoff: float = 2.0,
    max_delay: float | None = None,
    jitter: bool = True,
    retry_if: Callable[[BaseException], bool],
    cancel: threading.Event | None = None,
    on_retry: Callable[[int, BaseException, float], None] | None = None,
    sleep: Callable[[float], None] | None = None,
) -> T:
    """`fn()`'s result, after at most `attempts` calls; else the last exception.

    `on_retry(attempt, exc, wait)` is called after failed attempt number
    `attempt` (from 1), before waiting `wait` seconds. `sleep` replaces the
    cancellable wait (for tests); `cancel` is still checked around it.
    """
    waits = delays(attempts, delay, backoff, max_delay)
    for attempt in range(1, attempts + 1):
        _check(cancel)
        try:
            return fn()
        except Exception as exc:
            if attempt == attempts or not retry_if(exc) or (cancel is not None and cancel.is_set()):
                raise
            wait = waits[attempt - 1] * (random.uniform(0.5, 1.0) if jitter else 1.0)
            if on_retry is not None:
                on_retry(attempt, exc, wait)
            _wait(wait, cancel, sleep)
    raise AssertionError("unreachable")  # pragma: no cover


def _wait(seconds: float, cancel: threading.Event | None, sleep: Callable[[float], None] | None) -> None:
    if sleep is not None:
        sleep(seconds)
    elif cancel is not None:
        cancel.wait(seconds)
    else:
        time.sleep(seconds)
    _check(cancel)


def _check(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("cancelled while waiting to try again")
