"""Following a run's log as it grows: the one tailing code behind `sshexec logs --follow` and the server's live log.

A run's log (log_chunks in the database, store/logs.py) is append-only and
written by whichever process runs it, the CLI or a server, on this machine or
another: a reader only ever needs the database. `LogTail.poll()` hands out what was appended
since the last call, in whole lines while the run goes on; once the record
says the run ended, the rest (an unfinished last line included) follows and
the tail is `done`. `follow()` is the blocking loop around it; the server
drives `poll()` from its event loop.

The end is decided in this order, so that no line is lost: the record is read
first, then the log is drained; bytes written before the record changed are
stored by then (the Runner closes its LogWriter before it records the end).

A follower polls (one indexed query every POLL seconds, on either engine):
simpler than PostgreSQL's LISTEN/NOTIFY, and the same for SQLite.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Iterator

# How often a follower looks at the database: a line waits at most this long (plus the writer's FLUSH).
POLL = 0.05
# At most this much in one piece, so that ten followers of a huge log stay small.
CHUNK = 256 * 1024


class LogTail:
    """What a run's log gained since the last poll, from byte `offset` on.

    `read(start, limit)` gives the log's bytes from `start` on (History.read_log);
    `finished()` says whether the run has ended (its record's status is no longer
    "queued" or "running"); it is asked only when the log has nothing new.
    """

    def __init__(self, read: Callable[[int, int], bytes], finished: Callable[[], bool], *, offset: int = 0, chunk: int = CHUNK):
        self.read = read
        self.finished = finished
        self.offset = offset
        self.chunk = chunk
        self.done = False

    @classmethod
    def for_run(cls, history, run_id: str, **kw) -> "LogTail":
        def finished() -> bool:
            rec = history.run(run_id)
            return rec is None or rec.status not in ("running", "queued", "waiting")  # a queued run's log is still to come; a waiting one goes on

        return cls(lambda start, limit: history.read_log(run_id, start, limit), finished, **kw)

    def poll(self) -> bytes:
        """New bytes: whole lines while the run goes on, everything once it ended; b"" if none yet."""
        if self.done:
            return b""
        data = self._read(whole_lines=True)
        if data:
            return data
        if not self.finished():
            return b""
        data = self._read(whole_lines=False)
        if not data:
            self.done = True
            self.close()
        return data

    def follow(self, stop: threading.Event | None = None, poll: float = POLL) -> Iterator[bytes]:
        """Every new piece of the log until the run ends (or `stop` is set)."""
        try:
            while not self.done and not (stop is not None and stop.is_set()):
                data = self.poll()
                if data:
                    yield data
                elif not self.done:
                    if stop is not None:
                        stop.wait(poll)
                    else:
                        time.sleep(poll)
        finally:
            self.close()

    def close(self) -> None:
        """Nothing is held open between polls; here for the readers that used to hold a file."""

    def _read(self, *, whole_lines: bool) -> bytes:
        data = self.read(self.offset, self.chunk)[: self.chunk]
        if whole_lines and data and len(data) < self.chunk:
            # Hold back an unfinished last line: it may still grow. A line longer than a
            # chunk is passed on in pieces, or a follower would wait for it forever.
            end = data.rfind(b"\n")
            data = data[: end + 1] if end != -1 else b""
        self.offset += len(data)
        return data

    def __enter__(self) -> "LogTail":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
