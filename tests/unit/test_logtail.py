"""Following a growing log: whole lines while the run goes on, everything once it ended, nothing lost."""

from __future__ import annotations

import threading

from sshexec.store.logtail import LogTail


class Run:
    """A run's log being written, and its record's "ended" flag (set after the log is closed, as the Runner does)."""

    def __init__(self, path):
        self.path = path
        self.fh = open(path, "ab")
        self.ended = False

    def write(self, data: bytes) -> None:
        self.fh.write(data)
        self.fh.flush()

    def end(self) -> None:
        self.fh.close()
        self.ended = True


def test_whole_lines_while_running_then_the_rest(tmp_path):
    run = Run(tmp_path / "output.log")
    tail = LogTail(run.path, lambda: run.ended)
    assert tail.poll() == b""
    run.write(b"w1/a | one\nw1/a | tw")
    assert tail.poll() == b"w1/a | one\n"
    assert tail.poll() == b"" and not tail.done  # the half line waits
    run.write(b"o\nw1/a ! no newline at the end")
    assert tail.poll() == b"w1/a | two\n"
    run.end()
    assert tail.poll() == b"w1/a ! no newline at the end"
    assert tail.poll() == b"" and tail.done


def test_a_missing_file_is_an_empty_log(tmp_path):
    ended = []
    tail = LogTail(tmp_path / "none.log", lambda: bool(ended))
    assert tail.poll() == b"" and not tail.done
    ended.append(1)
    assert tail.poll() == b"" and tail.done


def test_a_line_longer_than_a_chunk_is_passed_on_in_pieces(tmp_path):
    run = Run(tmp_path / "output.log")
    run.write(b"x" * 100)
    tail = LogTail(run.path, lambda: run.ended, chunk=16)
    assert tail.poll() == b"x" * 16


def test_follow_gets_every_byte_of_a_concurrent_writer(tmp_path):
    run = Run(tmp_path / "output.log")
    lines = [f"w{i % 3}/s {'|!'[i % 2]} line {i}\n".encode() for i in range(20000)]

    def writer():
        for i in range(0, len(lines), 7):
            run.write(b"".join(lines[i : i + 7]))
        run.end()

    t = threading.Thread(target=writer)
    t.start()
    got = b"".join(LogTail(run.path, lambda: run.ended, chunk=4096).follow(poll=0.001))
    t.join()
    assert got == b"".join(lines)


def test_follow_resumes_from_an_offset_and_stops_when_asked(tmp_path):
    run = Run(tmp_path / "output.log")
    run.write(b"a\nb\nc\n")
    run.end()
    assert b"".join(LogTail(run.path, lambda: True, offset=2).follow()) == b"b\nc\n"
    stop = threading.Event()
    stop.set()
    assert list(LogTail(run.path, lambda: False).follow(stop)) == []
