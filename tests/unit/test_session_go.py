"""WorkerSession.go(): the one GO round trip, over a fake connection. The session alone writes what it learns."""

from __future__ import annotations

import shlex
import threading
from pathlib import Path

import pytest

import sshexec.worker.session as session_mod
from sshexec.config.inventory import Worker
from sshexec.errors import Cancelled, ConnectionLost
from sshexec.ssh import Aborted
from sshexec.worker.coord import Owner
from sshexec.worker.docker import WorkerFacts

W = Worker("w1", "h", 22, "deploy", None, Path("/kh"), ("docker",), "~/.sshexec", 5.0)
ROOT = b"##sshexec-state root /var/lib/sx/w1 1000 1000 x86_64\n"
IMAGE = b'##sshexec-state image null\t["/bin/sh"]\t""\tlinux\tamd64\tsha256:7f2c\n'
STAGED = b"##sshexec-state staged\n"


class Channel:
    def __init__(self):
        self.sent: list[bytes] = []
        self.write_shut = False

    def sendall(self, data: bytes) -> None:
        self.sent.append(data)

    def shutdown_write(self) -> None:
        self.write_shut = True


class FakeConnection:
    """Plays GO: `script(chan, on_stdout, on_stderr, on_abort)` returns the exit code or raises."""

    script = None
    commands: list[str] = []

    def __init__(self, worker, **kw):
        self.worker = worker
        self.on_retry = None
        self.chan = Channel()

    @property
    def is_open(self) -> bool:
        return True

    def memo(self):
        return None  # not a kept connection: GO inspects every time (worker/facts.py)

    def stream(self, command, *, stdin, keep_stdin_open, on_channel, on_stdout, on_stderr, timeout, cancel, on_abort, ready=None, preamble=b""):
        FakeConnection.commands.append(command if ready is None else ("READY", ready, preamble))
        on_channel(self.chan)
        return FakeConnection.script(self.chan, on_stdout, on_stderr, on_abort)

    def run(self, command, *, timeout):
        FakeConnection.commands.append(command)

        class R:
            ok = True

        return R()


@pytest.fixture
def session(monkeypatch):
    monkeypatch.setattr(session_mod, "Connection", FakeConnection)
    FakeConnection.commands = []
    return session_mod.WorkerSession(W, "r-1")


def go(session, *, cancel=None, out=None, err=None, started=None):
    out, err, started = out if out is not None else [], err if err is not None else [], started if started is not None else []
    return session.go(
        "s", container="c-1", image="img:1", bundle=b"tar", user="image", docker_args=["--rm"], owner=Owner.here(),
        header=b"HEADER", on_stdout=out.append, on_stderr=err.append, on_started=lambda: started.append(True),
        timeout=60, cancel=cancel or threading.Event(),
    )  # fmt: skip


def test_a_step_that_ran_sends_its_header_after_staged_and_teaches_the_session(session):
    def script(chan, on_stdout, on_stderr, on_abort):
        on_stderr(ROOT + IMAGE)
        assert chan.sent == []  # nothing but the bundle before GO said "staged"
        on_stderr(STAGED + b"container says hi\n")
        assert chan.sent == [b"HEADER"]
        on_stdout(b"out\n")
        return 0

    FakeConnection.script = script
    out, err, started = [], [], []
    reply = go(session, out=out, err=err, started=started)
    assert (reply.started, reply.code, reply.finished, reply.aborted, reply.lost, reply.left_marked) == (True, 0, True, None, None, False)
    assert b"".join(err) == b"container says hi\n" and out == [b"out\n"] and started == [True]
    assert session.facts == WorkerFacts("/var/lib/sx/w1", "1000", "1000", "x86_64")
    assert session.images["img:1"].cmd == ("/bin/sh",) and session.executor_ok
    # Something of the run may be on the worker until the step says GO removed it.
    assert session.dirty and session.beat_left
    session.step_removed()
    assert not session.dirty and not session.beat_left
    with pytest.raises(TypeError):
        session.images["other"] = None  # read-only: only the session writes what it knows


def test_a_missing_image_is_a_reply_not_a_run(session):
    def script(chan, on_stdout, on_stderr, on_abort):
        on_stderr(ROOT + b"##sshexec-state noimage  Error: No such image\n")
        return 96

    FakeConnection.script = script
    reply = go(session)
    assert not reply.started and reply.code == 96 and reply.facts == {"noimage": " Error: No such image"}
    assert session.facts is not None and not session.executor_ok and "img:1" not in session.images


def test_a_cancel_before_the_container_started_raises_and_leaves_the_session_dirty(session):
    def script(chan, on_stdout, on_stderr, on_abort):
        on_stderr(ROOT)
        on_abort("cancel")
        raise Aborted("cancel", None)

    FakeConnection.script = script
    with pytest.raises(Cancelled):
        go(session)
    assert session.dirty  # the run's sweep removes what the stopped GO left
    assert any("sshexec-stop" in c for c in FakeConnection.commands), "the container is stopped"


def test_a_timeout_stops_the_container_and_closes_its_stdin(session):
    def script(chan, on_stdout, on_stderr, on_abort):
        on_stderr(ROOT + IMAGE + STAGED)
        on_abort("timeout")
        assert chan.write_shut
        raise Aborted("timeout", 143)

    FakeConnection.script = script
    reply = go(session)
    assert (reply.started, reply.aborted, reply.finished, reply.code) == (True, "timeout", True, None)


def test_a_lost_connection_and_the_left_marker_are_reported(session):
    def lost(chan, on_stdout, on_stderr, on_abort):
        on_stderr(ROOT + IMAGE + STAGED)
        raise ConnectionLost("w1", "connection to w1 lost")

    FakeConnection.script = lost
    reply = go(session)
    assert reply.started and reply.lost is not None and not reply.finished

    def left(chan, on_stdout, on_stderr, on_abort):
        on_stderr(ROOT + IMAGE + STAGED + b"bye\n##sshexec-left /var/lib/sx/w1/runs/r-1/w1/s\n")
        return 0

    FakeConnection.script = left
    assert go(session).left_marked


def test_a_kept_connection_hands_go_the_line_it_printed_and_forgets_it_when_docker_run_fails(session, monkeypatch):
    """worker/facts.py: a GO that ran keeps its image line; GO gets it as `known`; a docker run failure (125) with it forgets."""
    from sshexec.worker.scriptlet import unwrap

    kept, forgotten = {}, []
    monkeypatch.setattr(session_mod, "known", lambda conn, docker, image: (kept.get(image, ""), "HELD"))
    monkeypatch.setattr(session_mod, "remember", lambda conn, docker, ticket, image, line: kept.__setitem__(image, (ticket, line)))
    monkeypatch.setattr(session_mod, "forget", lambda conn, docker, image=None: forgotten.append(image))

    def ran(chan, on_stdout, on_stderr, on_abort):
        on_stderr(ROOT + IMAGE + STAGED)
        return 0

    FakeConnection.script = ran
    go(session)
    assert unwrap(FakeConnection.commands[-1])[4 + 11] == ""  # the 12th argument: `known`
    assert kept == {"img:1": ("HELD", IMAGE.decode().removeprefix("##sshexec-state image ").rstrip("\n"))}
    kept["img:1"] = "LINE"

    def gone(chan, on_stdout, on_stderr, on_abort):
        on_stderr(ROOT + IMAGE + STAGED + b"docker: Error response from daemon: No such image: sha256:1234.\n")
        return 125

    FakeConnection.script = gone
    go(session)
    assert unwrap(FakeConnection.commands[-1])[4 + 11] == "LINE"
    assert forgotten == [None]


def test_a_pull_forgets_what_the_connection_knew_of_that_image(session, monkeypatch):
    """After a pull by this session the tag may name another image: GO inspects it again (worker/facts.py)."""
    calls = []
    monkeypatch.setattr(session_mod, "forget", lambda conn, docker, image=None: calls.append(("forget", image)))
    monkeypatch.setattr(session_mod, "pull_image", lambda conn, image, *a, **k: calls.append(("pull", image)) or "INFO")
    assert session.pull("img:1", None, None) == "INFO"
    assert calls == [("forget", "img:1"), ("pull", "img:1")]


def test_a_kept_connection_runs_go_started_ahead_with_its_arguments_as_one_line(session, monkeypatch):
    """ssh/_companion.py's Ahead: on a kept connection every GO asks for a GO_WAITING to be started ahead (between
    commands); one that waits runs the next GO, handed `quote(args)` as its first line, the same words a fresh GO
    gets on its command line. Arguments with a newline cannot be one line: a fresh GO then, the waiting one left."""
    from sshexec.worker.scriptlet import unwrap

    asked, waiting = [], {}
    conn = session.conn
    monkeypatch.setattr(conn, "memo", lambda: {}, raising=False)
    monkeypatch.setattr(conn, "ahead_later", lambda key, command: asked.append((key, command)), raising=False)
    monkeypatch.setattr(conn, "take_ahead", lambda key: waiting.pop(key, None), raising=False)
    monkeypatch.setattr(session_mod, "known", lambda conn, docker, image: ("", None))

    def ran(chan, on_stdout, on_stderr, on_abort):
        on_stderr(ROOT + IMAGE + STAGED)
        return 0

    FakeConnection.script = ran
    go(session)
    fresh = unwrap(FakeConnection.commands[-1])
    key = session_mod.go_waiting(tuple(W.docker))
    assert asked == [(key, key)] and unwrap(key)[:4] == ["sh", "-c", unwrap(key)[2], "sshexec-go"]
    waiting[key] = "AHEAD"
    go(session)
    kind, ready, preamble = FakeConnection.commands[-1]
    assert (kind, ready, waiting) == ("READY", "AHEAD", {})
    assert preamble.endswith(b"\n") and preamble.count(b"\n") == 1
    assert shlex.split(preamble.decode()) == fresh[4:]  # the very words of the fresh GO's command line
    waiting[key] = "AHEAD"
    session.go(
        "s", container="c-1", image="img:1", bundle=b"tar", user="image", docker_args=["--label", "a=b\nc"], owner=Owner.here(),
        header=b"HEADER", on_stdout=[].append, on_stderr=[].append, on_started=lambda: None, timeout=60, cancel=threading.Event(),
    )  # fmt: skip
    assert isinstance(FakeConnection.commands[-1], str) and unwrap(FakeConnection.commands[-1])[-1] == "a=b\nc"
    assert waiting == {key: "AHEAD"}
    # A word that came from undecodable bytes goes back as those bytes, as a fresh GO's line sends it.
    session.go(
        "s", container="c-1", image="img:1", bundle=b"tar", user="image", docker_args=["--label", "a=\udcff"], owner=Owner.here(),
        header=b"HEADER", on_stdout=[].append, on_stderr=[].append, on_started=lambda: None, timeout=60, cancel=threading.Event(),
    )  # fmt: skip
    assert FakeConnection.commands[-1][0] == "READY" and FakeConnection.commands[-1][2].endswith(b"'a=\xff'\n")


def test_go_started_ahead_that_ended_before_its_line_is_replaced_by_a_fresh_one(session, monkeypatch):
    """No "go" state line: the waiting GO never read its arguments (killed on the worker meanwhile), so it did
    nothing; a fresh GO runs the step. With the line, GO's own exit code stands."""
    from sshexec.worker.scriptlet import unwrap

    conn = session.conn
    waiting = {}
    monkeypatch.setattr(conn, "memo", lambda: {}, raising=False)
    monkeypatch.setattr(conn, "ahead_later", lambda key, command: None, raising=False)
    monkeypatch.setattr(conn, "take_ahead", lambda key: waiting.pop(key, None), raising=False)
    monkeypatch.setattr(session_mod, "known", lambda conn, docker, image: ("", None))
    key = session_mod.go_waiting(tuple(W.docker))

    def script(chan, on_stdout, on_stderr, on_abort):
        if isinstance(FakeConnection.commands[-1], tuple):
            return 143  # killed while it waited: no line read, nothing done
        on_stderr(ROOT + IMAGE + STAGED)
        return 0

    FakeConnection.script = script
    waiting[key] = "AHEAD"
    FakeConnection.commands = []
    reply = go(session)
    assert [type(c) for c in FakeConnection.commands] == [tuple, str] and unwrap(FakeConnection.commands[1])[3] == "sshexec-go"
    assert (reply.started, reply.code) == (True, 0)

    def refused(chan, on_stdout, on_stderr, on_abort):
        on_stderr(b"##sshexec-state go\n" + ROOT + b"##sshexec-state noimage  Error: No such image\n")
        return 96

    FakeConnection.script = refused
    waiting[key] = "AHEAD"
    FakeConnection.commands = []
    reply = go(session)
    assert [type(c) for c in FakeConnection.commands] == [tuple] and (reply.started, reply.code) == (False, 96)
