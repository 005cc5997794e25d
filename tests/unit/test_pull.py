"""pull_image: retries transient registry failures only, and says how many attempts it made."""

import time
from pathlib import Path

import pytest

import sshexec.worker.pull as pull
from sshexec.config.inventory import Feed, Worker
from sshexec.errors import LoginError, PullError

W = Worker("w1", "h", 22, "u", None, Path("/kh"), ("docker",), "~/.sshexec", 5.0)
INSPECT = b'image\timg:1\tnull\t["sh"]\t""\tlinux\tamd64\tsha256:abc\n'


class FakeConn:
    """Plays back (exit code, stdout, stderr) for each command; records what was sent."""

    worker = W

    def __init__(self, *replies):
        self.replies = list(replies)
        self.calls = []

    def stream(self, command, *, stdin, on_stdout, on_stderr, **kw):
        self.calls.append((command, stdin))
        code, out, err = self.replies.pop(0)
        on_stdout(out)
        on_stderr(err)
        return code


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    monkeypatch.setattr(time, "sleep", lambda s: None)


def test_transient_failures_are_retried():
    conn = FakeConn(
        (91, b"", b"received unexpected HTTP status: 503 Service Unavailable"),
        (91, b"", b"read: connection reset by peer"),
        (0, b"abc123def456: Pull complete\n" + INSPECT, b""),
    )
    info = pull.pull_image(conn, "img:1", None, None, cfg_dir="c")
    assert info.id == "sha256:abc" and len(conn.calls) == 3


def test_not_found_is_not_retried():
    conn = FakeConn((91, b"", b"manifest unknown: manifest unknown"))
    with pytest.raises(PullError, match="not found"):
        pull.pull_image(conn, "127.0.0.1:5000/x:1", None, None, cfg_dir="c")
    assert len(conn.calls) == 1


def test_gives_up_after_three_attempts_and_says_so():
    conn = FakeConn(*[(91, b"", b"dial tcp 127.0.0.1:5000: connect: connection refused")] * 3)
    with pytest.raises(PullError, match="after 3 attempts"):
        pull.pull_image(conn, "127.0.0.1:5000/x:1", None, None, cfg_dir="c")


def test_login_failure_names_the_feed_and_password_goes_on_stdin():
    from sshexec.core.secrets import Secret

    feed = Feed("lab", "127.0.0.1:5000", "ci", "PW")
    conn = FakeConn((90, b"", b"Error response from daemon: login attempt failed with status: 401 Unauthorized"))
    with pytest.raises(LoginError, match="registry login failed for feed lab on w1"):
        pull.pull_image(conn, "127.0.0.1:5000/x:1", feed, Secret("hunter2"), cfg_dir="c")
    command, stdin = conn.calls[0]
    assert stdin == b"hunter2" and "hunter2" not in command
    assert len(conn.calls) == 1  # a refused login is not retried


def test_waits_between_attempts_follow_the_documented_schedule():
    from sshexec.core.retry import delays

    waits = []
    conn = FakeConn(*[(91, b"", b"received unexpected HTTP status: 503 Service Unavailable")] * 3)
    with pytest.raises(PullError, match="after 3 attempts"):
        pull.pull_image(conn, "img:1", None, None, cfg_dir="c", sleep=waits.append)
    worst = delays(pull.PULL_ATTEMPTS, pull.PULL_DELAY, 2.0, pull.PULL_MAX_DELAY)
    assert len(waits) == 2 and all(worst[i] / 2 <= w <= worst[i] for i, w in enumerate(waits))
    assert sum(worst) == 3.0  # the bound the docstring of pull_image gives


def test_a_cancel_during_the_wait_stops_the_pull():
    import threading

    from sshexec.errors import Cancelled

    cancel = threading.Event()
    conn = FakeConn(*[(91, b"", b"read: connection reset by peer")] * 3)
    with pytest.raises(Cancelled):
        pull.pull_image(conn, "img:1", None, None, cfg_dir="c", cancel=cancel, sleep=lambda s: cancel.set())
    assert len(conn.calls) == 1
