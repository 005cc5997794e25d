"""How many of something may be in flight at once toward one sshd, learning its limit from its refusals.

sshd refuses what goes past its limits instead of queueing it: connections
past MaxStartups are dropped before the banner, session channels past
MaxSessions are refused. sshexec holds one `Gate` per sshd for connection
starts (_dial.py) and one per connection for channels (connection.py).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

log = logging.getLogger("sshexec")


class Gate:
    """At most `limit` holders at once; after a refusal, no more than the server ever accepted together.

    A holder `acquire()`s, is `admitted(holder)` once the server accepted it,
    and is `release(holder)`d. When the server refuses one, `refused()` lowers
    the limit to `peak`, the most holders ever admitted and still open at once:
    the server took that many together, so its own limit is at least that. A
    count taken at the moment of the refusal can be too low: the server still
    counts what we released a moment ago (seen with MaxSessions 2, where such
    a count said 1), and what it admitted in parallel with the refused one may
    not be confirmed yet; when it is, the limit rises with `peak`. A holder
    the server already closed (`closed()` true) no longer counts toward `peak`.
    Waiting callers are woken on every release.
    """

    def __init__(self, limit: int, *, what: str):
        self.limit = limit
        self.what = what  # for the log: "an SSH channel", "a connection to 127.0.0.1:22"
        self.held = 0  # acquired: waiting for the server's answer, or admitted
        self.peak = 0
        self.learned = False  # the server refused one: `limit` follows `peak`
        self._admitted: dict[object, Callable[[], bool]] = {}
        self._cond = threading.Condition()

    def acquire(self, timeout: float | None = None) -> bool:
        """A place, within `timeout` seconds (None: however long it takes); False if none came free."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self.held >= self.limit:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
            self.held += 1
            return True

    def admitted(self, holder: object, *, closed: Callable[[], bool] = lambda: False) -> None:
        """The server accepted `holder` (acquired from this gate); `closed()` tells when it let go of it."""
        with self._cond:
            self._admitted[holder] = closed
            now = sum(1 for is_closed in self._admitted.values() if not is_closed())
            if now > self.peak:
                self.peak = now
                if self.learned and self.peak > self.limit:
                    self.limit = self.peak
                    self._cond.notify_all()

    def release(self, holder: object = None) -> None:
        """Give a place back (`holder`: what was admitted, if it was)."""
        with self._cond:
            self.held -= 1
            self._admitted.pop(holder, None)
            self._cond.notify_all()

    def refused(self, *, lagging: bool = False) -> None:
        """The server refused a holder (already released): no more than it ever accepted at once, from now on.

        `lagging`: the server frees places later than we see them end (sshd's
        MaxStartups count waits for a child process to report its login), so
        it refuses even below `peak`; then one fewer than now, each time.
        """
        with self._cond:
            self.learned = True
            limit = max(1, self.peak)
            if lagging:
                limit = max(1, min(limit, self.limit - 1))
            if limit < self.limit:
                log.info("the server refused %s: at most %d at once from now on", self.what, limit)
                self.limit = limit
