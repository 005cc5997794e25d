"""The log writer with a fake database: write() never waits for the database, batches are stored in order,
a database that stops answering loses nothing when it comes back, and memory stays bounded meanwhile."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

from sshexec.errors import DatabaseError
from sshexec.store.logs import LogWriter


class FakeDb:
    """Records each batch (the rows of one transaction); `down` makes writes fail; `slow` makes them slow."""

    def __init__(self):
        self.batches: list[list[dict]] = []
        self.down = threading.Event()
        self.gate = threading.Event()  # a batch waits for it: a database that takes as long as we like
        self.gate.set()
        self.failures = 0

    @contextmanager
    def write(self):
        if self.down.is_set():
            self.failures += 1
            raise DatabaseError("fake://db", "database fake://db: connection refused")
        self.gate.wait()
        db = self

        class Conn:
            def execute(self, stmt, rows):
                db.batches.append(list(rows))

        yield Conn()

    def stored(self) -> bytes:
        rows = [r for b in self.batches for r in b]
        assert [r["pos"] for r in rows] == sorted({r["pos"] for r in rows}), "rows in order, none twice"
        return b"".join(r["data"] for r in rows)


def test_batches_in_order_and_chunked():
    db = FakeDb()
    log = LogWriter(db, "r1", chunk=10, flush=0.01)
    for i in range(100):
        log.write(f"line {i}\n".encode())
    log.close()
    assert db.stored() == b"".join(f"line {i}\n".encode() for i in range(100))
    assert max(len(r["data"]) for b in db.batches for r in b) <= 10
    assert len(db.batches) < 100  # batched, not a transaction per write


def test_write_does_not_wait_for_a_slow_database():
    db = FakeDb()
    db.gate.clear()  # every transaction hangs until the test lets it go
    log = LogWriter(db, "r1", flush=0.01)
    log.write(b"first\n")
    done = threading.Event()

    def step():
        for _ in range(1000):
            log.write(b"x" * 100 + b"\n")
        done.set()

    threading.Thread(target=step, daemon=True).start()
    # The step's 1000 writes all return while the database has not finished a single batch.
    assert done.wait(30) and db.batches == []
    db.gate.set()
    log.close()
    assert db.stored() == b"first\n" + (b"x" * 100 + b"\n") * 1000


def test_a_database_that_comes_back_loses_nothing():
    db = FakeDb()
    db.down.set()
    log = LogWriter(db, "r1", flush=0.01)
    log.write(b"before\n")
    for _ in range(3000):  # until the thread has failed twice (bounded)
        if db.failures >= 2:
            break
        time.sleep(0.01)
    log.write(b"while down\n")
    db.down.clear()
    log.write(b"after\n")
    log.close()
    assert db.stored() == b"before\nwhile down\nafter\n" and log.lost == 0


def test_memory_is_bounded_while_the_database_is_away():
    db = FakeDb()
    db.down.set()
    log = LogWriter(db, "r1", flush=0.01, backlog=1000)
    done = threading.Event()

    def write():
        for _ in range(50):
            log.write(b"y" * 99 + b"\n")
        done.set()

    threading.Thread(target=write, daemon=True).start()
    assert not done.wait(0.5)  # past the backlog, write() waits for the database
    assert len(log._buf) <= 1000 + 100
    db.down.clear()
    assert done.wait(10)
    log.close()
    assert db.stored() == (b"y" * 99 + b"\n") * 50


def test_close_gives_up_on_a_database_that_never_comes_back():
    db = FakeDb()
    db.down.set()
    log = LogWriter(db, "r1", flush=0.01)
    log.write(b"lost\n")
    log.close(timeout=0.3)
    assert log.lost == 5 and db.stored() == b""
