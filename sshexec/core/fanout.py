"""Many things at once (workers, mostly): bounded concurrency, one result (or exception) per item, by name."""

from __future__ import annotations

import threading
import time
from operator import attrgetter
from typing import Callable, Iterable, TypeVar

from ..errors import Cancelled

T = TypeVar("T")
I = TypeVar("I")

# The library's default. The program's --parallel defaults to $SSHEXEC_PARALLEL,
# read when a command runs (sshexec/cli/common.py), else to this.
DEFAULT_PARALLEL = 16


def fan_out(
    workers: Iterable[I],
    fn: Callable[[I], T],
    *,
    parallel: int = DEFAULT_PARALLEL,
    on_done: Callable[[I, T | BaseException], None] | None = None,
    cancel: threading.Event | None = None,
    grace: float | None = None,
    name: Callable[[I], str] = attrgetter("name"),
) -> dict[str, T | BaseException]:
    """Run fn(item) for every item (a worker, say), at most `parallel` at a time.

    Returns {name(item): result or the exception it raised}, in the items'
    order. Once `cancel` is set, calls not yet started are skipped, and after
    `grace` seconds the calls still running are abandoned (their threads are
    daemons and report `Cancelled`), so a cancel always returns promptly.
    """
    workers = list(workers)
    results: dict[str, T | BaseException] = {}
    if not workers:
        return results
    slots = threading.Semaphore(max(1, parallel))
    lock = threading.Lock()
    all_done = threading.Event()
    left = [len(workers)]

    def call(w: I) -> None:
        with slots:
            if cancel is not None and cancel.is_set():
                res: T | BaseException = Cancelled(f"{name(w)}: not started (cancelled)")
            else:
                try:
                    res = fn(w)
                except BaseException as exc:  # noqa: BLE001 - handed back to the caller per worker
                    res = exc
        with lock:
            results[name(w)] = res
            left[0] -= 1
            if left[0] == 0:
                all_done.set()
        if on_done is not None:
            on_done(w, res)

    for w in workers:
        threading.Thread(target=call, args=(w,), name=f"sshexec-{name(w)}", daemon=True).start()
    cancelled_at = None
    # A short wait keeps the calling thread responsive to signals.
    while not all_done.wait(0.1):
        if cancel is not None and cancel.is_set() and grace is not None:
            cancelled_at = cancelled_at or time.monotonic()
            if time.monotonic() - cancelled_at > grace:
                break
    with lock:
        return {name(w): results.get(name(w), Cancelled(f"{name(w)}: did not stop within {grace}s")) for w in workers}
