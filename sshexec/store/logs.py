"""A run's log in the database: written in batches off the step's path, read back by byte offset.

The log is the byte stream the output pipeline wrote (masked, each line
prefixed `WORKER/STEP | `), kept as rows of log_chunks: (run, pos, data),
where pos is the offset of data's first byte. Rows cut the stream anywhere,
mid-line too; a reader (logtail.py) puts lines back together. A row per line
would be a million rows for a million-line step; a chunk per batch is a
handful of rows a second, whatever the step prints.

The writer never makes a step wait for the database: `write()` appends to
memory and returns; a thread stores what was written every FLUSH seconds,
in one transaction. If the database stops answering, the thread keeps the
bytes and tries again; only when BACKLOG bytes are waiting does `write()`
block, so memory stays bounded. `close()` stores the rest (the Runner
closes the log before it records the run's end: a reader that sees the end
has every byte).
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError

from ..errors import DatabaseError
from .schema import log_chunks

log = logging.getLogger("sshexec")

FLUSH = 0.05  # seconds between batches: a line waits at most this long to be seen elsewhere (plus a reader's poll)
CHUNK = 64 * 1024  # at most this much in one row
BACKLOG = 32 * 1024 * 1024  # bytes waiting for the database before write() waits too
CLOSE_WAIT = 120.0  # seconds close() keeps trying to store the rest while the database is away
RETRY = (0.2, 2.0)  # the first wait after a failed batch, and the longest


class LogWriter:
    """A run's log as the Runner writes it: `write()` at memory speed, stored in batches by a thread."""

    def __init__(self, db, run_id: str, *, flush: float = FLUSH, chunk: int = CHUNK, backlog: int = BACKLOG, start: int = 0):
        self.db, self.run_id = db, run_id
        self.flush_every, self.chunk, self.backlog = flush, chunk, backlog
        self.pos = start  # offset of the first byte not yet stored
        self._buf = bytearray()
        self._cond = threading.Condition()
        self._closing = False
        self._failing: str | None = None  # the last error, while batches fail
        self.lost = 0  # bytes given up at close() because the database never came back
        self._thread = threading.Thread(target=self._run, name=f"log-{run_id}", daemon=True)
        self._thread.start()

    def write(self, data: bytes) -> None:
        if not data:
            return
        with self._cond:
            if self._closing:
                raise ValueError("write to a closed log")
            while len(self._buf) >= self.backlog and not self._closing:
                self._cond.wait(1.0)  # the database is behind by BACKLOG bytes: the step waits, memory does not grow
            self._buf += data

    def flush(self) -> None:
        """Nothing to do: the thread stores what was written within FLUSH seconds (PrefixWriter calls this after each write)."""

    def close(self, timeout: float = CLOSE_WAIT) -> None:
        """Store what is left and stop the thread; after `timeout` s of a database that does not answer, give up (logged)."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._close_by = time.monotonic() + timeout
            self._cond.notify_all()
        self._thread.join()

    def __enter__(self) -> "LogWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        wait = RETRY[0]
        while True:
            with self._cond:
                if not self._closing and len(self._buf) < 4 * self.chunk:
                    self._cond.wait(self.flush_every)
                # The buffer is handed over whole, not copied: the step's thread goes on at once with a new one.
                data, self._buf = self._buf, bytearray()
                closing = self._closing
            if not data:
                if closing:
                    return
                continue
            try:
                self._store(data)
            except DatabaseError as exc:
                if self._failing is None:
                    log.warning("run %s: its log is kept in memory until the database answers again: %s", self.run_id, exc.message)
                self._failing = exc.message
                with self._cond:
                    self._buf[:0] = data  # kept, before whatever came meanwhile
                if closing and time.monotonic() >= self._close_by:
                    with self._cond:
                        self.lost = len(self._buf)
                        self._buf.clear()
                        self._cond.notify_all()
                    log.error("run %s: %d bytes of its log were lost: %s", self.run_id, self.lost, exc.message)
                    return
                time.sleep(wait)
                wait = min(wait * 2, RETRY[1])
                continue
            if self._failing is not None:
                log.warning("run %s: the database answers again; its log is stored", self.run_id)
                self._failing = None
            wait = RETRY[0]
            with self._cond:
                self._cond.notify_all()  # a write() waiting on the backlog may go on

    def _store(self, data: bytes) -> None:
        rows = []
        pos = self.pos
        view = memoryview(data)
        for i in range(0, len(data), self.chunk):
            piece = bytes(view[i : i + self.chunk])
            rows.append({"run_id": self.run_id, "pos": pos, "data": piece})
            pos += len(piece)
        try:
            with self.db.write() as c:
                c.execute(insert(log_chunks), rows)
        except IntegrityError:
            # The batch was committed, but the answer was lost with the connection: a retry finds its rows.
            pass
        self.pos = pos


def read_log(db, run_id: str, start: int = 0, limit: int = 1 << 20) -> bytes:
    """The log of `run_id` from byte `start` on: whole rows, about `limit` bytes (fewer, or up to 64 rows more); b"" if nothing is there yet."""
    lc = log_chunks.c
    first = select(func.coalesce(func.max(lc.pos), 0)).where(lc.run_id == run_id, lc.pos <= start).scalar_subquery()
    # Rows are at most CHUNK and often far smaller (a quiet step's batch is a line or two): ask for
    # enough of them to fill `limit` in one query, but never so many that a poll holds much memory.
    rows_wanted = min(64, max(1, limit // 4096))
    with db.read() as c:
        rows = c.execute(select(lc.pos, lc.data).where(lc.run_id == run_id, lc.pos >= first).order_by(lc.pos).limit(rows_wanted)).all()
    if not rows:
        return b""
    data = b"".join(r.data for r in rows)
    skip = start - rows[0].pos
    return data[skip:] if skip > 0 else data
