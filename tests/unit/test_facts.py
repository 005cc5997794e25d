"""What a kept connection knows of its worker's images (worker/facts.py), against a fake connection and watcher:
a line is reused only while the watcher started before its GO stays quiet; any byte or its end forgets every image."""

from __future__ import annotations

import pytest

from sshexec.ssh._companion import Companion
from sshexec.worker.scriptlet import unwrap
from sshexec.worker.facts import WATCH, forget, known, remember

DOCKER = ("docker", "--host", "unix:///run/d.sock")


class FakeWatch:
    def __init__(self):
        self.said, self.ended, self.closed = False, False, False

    def stirred(self) -> bool:
        said, self.said = self.said, False
        return said or self.ended

    def close(self) -> None:
        self.closed = True


class KeptConnection:
    def __init__(self, kept=True):
        self._memo = {} if kept else None
        self.started: list[str] = []
        self.watches: list[FakeWatch] = []

    def memo(self):
        return self._memo

    def companion(self, command):
        self.started.append(command)
        self.watches.append(FakeWatch())
        return self.watches[-1]


def test_a_line_is_reused_while_the_watcher_started_before_its_go_is_quiet():
    conn = KeptConnection()
    line, held = known(conn, DOCKER, "img:1")
    assert line == "" and held is not None
    (command,) = conn.started  # started before the GO whose line is kept
    argv = unwrap(command)
    assert argv[3] == "sshexec-watch" and argv[2] == WATCH.script(DOCKER) and "docker --host unix:///run/d.sock events --since" in argv[2]
    remember(conn, DOCKER, held, "img:1", "LINE")
    assert known(conn, DOCKER, "img:1") == ("LINE", held)
    assert known(conn, DOCKER, "img:2")[0] == ""
    assert known(conn, ("docker",), "img:1")[0] == "", "another docker command (another daemon) knows nothing of it"
    assert len(conn.started) == 2  # ... and has a watcher of its own


def test_any_event_forgets_every_image_and_an_ended_watcher_is_replaced():
    conn = KeptConnection()
    _, held = known(conn, DOCKER, "a")
    remember(conn, DOCKER, held, "a", "LA")
    remember(conn, DOCKER, held, "b", "LB")
    conn.watches[0].said = True
    assert known(conn, DOCKER, "a")[0] == "" and known(conn, DOCKER, "b")[0] == ""
    remember(conn, DOCKER, held, "a", "LA")
    conn.watches[0].ended = True
    line, again = known(conn, DOCKER, "a")
    assert line == "" and again is not held and conn.watches[0].closed and len(conn.started) == 2
    remember(conn, DOCKER, held, "a", "OLD")  # a GO that began under the ended watcher keeps nothing
    assert known(conn, DOCKER, "a")[0] == ""


def test_an_event_during_the_go_keeps_nothing_and_forget_drops_lines():
    conn = KeptConnection()
    _, ticket = known(conn, DOCKER, "a")
    conn.watches[0].said = True
    remember(conn, DOCKER, ticket, "a", "LA")
    assert known(conn, DOCKER, "a")[0] == ""
    _, ticket = known(conn, DOCKER, "a")
    remember(conn, DOCKER, ticket, "a", "LA")
    remember(conn, DOCKER, ticket, "b", "LB")
    forget(conn, DOCKER, "a")
    assert known(conn, DOCKER, "a")[0] == "" and known(conn, DOCKER, "b")[0] == "LB"
    forget(conn, DOCKER)
    assert known(conn, DOCKER, "b")[0] == ""


def test_an_event_read_by_another_steps_go_keeps_nothing_of_a_go_that_began_before_it():
    """Steps side by side on one connection: GO 1 inspects; an image event comes; GO 2's start reads it. GO 1's line,
    from before the event, must not be kept when GO 1 ends, though the watcher has nothing more to say by then."""
    conn = KeptConnection()
    _, first = known(conn, DOCKER, "a")
    conn.watches[0].said = True
    assert known(conn, DOCKER, "b")[0] == ""  # GO 2 begins: reads the event
    remember(conn, DOCKER, first, "a", "STALE")
    assert known(conn, DOCKER, "a")[0] == ""
    _, again = known(conn, DOCKER, "a")
    forget(conn, DOCKER, "b")  # a pull of another image meanwhile: GO 1's line may well be stale too
    remember(conn, DOCKER, again, "a", "LA")
    assert known(conn, DOCKER, "a")[0] == ""


def test_a_connection_that_is_not_kept_starts_no_watcher():
    conn = KeptConnection(kept=False)
    assert known(conn, DOCKER, "a") == ("", None)
    remember(conn, DOCKER, None, "a", "LA")
    assert conn.started == []


class FakeChannel:
    def __init__(self, out=b"", err=b""):
        self.out, self.err = bytearray(out), bytearray(err)
        self.closed = self.eof_received = False
        self.active = True

    def recv_ready(self):
        return bool(self.out)

    def recv(self, n):
        data, self.out[:] = bytes(self.out[:n]), self.out[n:]
        return data

    def recv_stderr_ready(self):
        return bool(self.err)

    def recv_stderr(self, n):
        data, self.err[:] = bytes(self.err[:n]), self.err[n:]
        return data

    def exit_status_ready(self):
        return False

    def get_transport(self):
        return self

    def is_active(self):
        return self.active


@pytest.mark.parametrize("out,err", [(b"x\n", b""), (b"", b"permission denied\n")])
def test_a_companion_is_stirred_by_any_byte_once_and_by_its_end_always(out, err):
    chan = FakeChannel(out, err)
    c = Companion(chan)
    assert c.stirred() and not c.stirred()
    chan.active = False
    assert c.stirred() and c.stirred()


def test_steps_side_by_side_on_one_connection_start_one_watcher():
    import threading
    import time

    class Slow(KeptConnection):
        def companion(self, command):
            time.sleep(0.2)  # a round trip or two: the other step's GO asks meanwhile
            return super().companion(command)

    conn = Slow()
    threads = [threading.Thread(target=known, args=(conn, DOCKER, f"img:{i}")) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(conn.started) == 1, conn.started
