"""A run's log in the database, on SQLite and PostgreSQL: written in batches off the step's path, followed
line by line while the run goes on, everything once it ended, nothing lost, resumable from a byte offset."""

from __future__ import annotations

import threading

from sshexec.store.history import History
from sshexec.store.logtail import LogTail


class Run:
    """A run being written, as the Runner does: its LogWriter, closed before the record says the run ended."""

    def __init__(self, h: History, run_id: str = "r1", **kw):
        self.h, self.id = h, run_id
        h.start_run(run_id, "rb", runbook_path="", inventory="", variables={})
        self.log = h.log_writer(run_id, **kw)

    def end(self) -> None:
        self.log.close()
        self.h.finish_run(self.id, "succeeded", 0, None)

    def tail(self, **kw) -> LogTail:
        return LogTail.for_run(self.h, self.id, **kw)


def wait_stored(run: Run, n: int) -> None:
    """Until the writer's thread has stored `n` bytes (it batches every FLUSH seconds)."""
    for _ in range(2000):
        if run.log.pos >= n:
            return
        threading.Event().wait(0.005)
    raise AssertionError(f"the log writer stored {run.log.pos} of {n} bytes")


def test_whole_lines_while_running_then_the_rest(db_url):
    run = Run(History(db_url))
    tail = run.tail()
    assert tail.poll() == b""
    run.log.write(b"w1/a | one\nw1/a | tw")
    wait_stored(run, 20)
    assert tail.poll() == b"w1/a | one\n"
    assert tail.poll() == b"" and not tail.done  # the half line waits
    run.log.write(b"o\nw1/a ! no newline at the end")
    wait_stored(run, 49)
    assert tail.poll() == b"w1/a | two\n"
    run.end()
    assert tail.poll() == b"w1/a ! no newline at the end"
    assert tail.poll() == b"" and tail.done


def test_an_empty_log_ends_with_its_run(db_url):
    run = Run(History(db_url))
    tail = run.tail()
    assert tail.poll() == b"" and not tail.done
    run.end()
    assert tail.poll() == b"" and tail.done


def test_a_line_longer_than_a_chunk_is_passed_on_in_pieces(db_url):
    run = Run(History(db_url))
    run.log.write(b"x" * 100)
    wait_stored(run, 100)
    assert run.tail(chunk=16).poll() == b"x" * 16


def test_follow_gets_every_byte_of_a_concurrent_writer(db_url):
    # Small rows (chunk=1000) and a short flush: many rows, cut mid-line, read back in order.
    run = Run(History(db_url), chunk=1000, flush=0.002)
    lines = [f"w{i % 3}/s {'|!'[i % 2]} line {i}\n".encode() for i in range(20000)]

    def writer():
        for i in range(0, len(lines), 7):
            run.log.write(b"".join(lines[i : i + 7]))
        run.end()

    t = threading.Thread(target=writer)
    t.start()
    got = b"".join(run.tail(chunk=4096).follow(poll=0.001))
    t.join()
    assert got == b"".join(lines)
    assert run.h.log_text(run.id) == got


def test_follow_resumes_from_any_offset_and_stops_when_asked(db_url):
    run = Run(History(db_url), chunk=3)  # rows "a\nb", "\nc\n": an offset inside a row
    run.log.write(b"a\nb\nc\n")
    run.end()
    for offset, rest in ((0, b"a\nb\nc\n"), (2, b"b\nc\n"), (4, b"c\n"), (6, b"")):
        assert b"".join(run.tail(offset=offset).follow()) == rest
    stop = threading.Event()
    stop.set()
    assert list(run.tail().follow(stop)) == []
