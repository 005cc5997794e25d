"""prepull: the registry credentials live under work_root/runs/<prepull id>/, swept on every exit path,
while the prepull keeps a heartbeat there (coord.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

import sshexec.ops.prepull as prepull_mod
from sshexec.config.inventory import Feed, Worker
from sshexec.errors import ConnectionLost, PullError
from sshexec.worker.scriptlet import unwrap

W = Worker("w1", "h", 22, "u", None, Path("/kh"), ("docker",), "~/.sshexec", 5.0)
INSPECT = b'image\timg:1\tnull\t["sh"]\t""\tlinux\tamd64\tsha256:abc\n'


class FakeConnection:
    """Stands in for connection.Connection: plays back the pull, records every command."""

    pull_reply: object = (0, INSPECT, b"")
    log: list

    def __init__(self, worker, **kw):
        self.worker = worker

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def stream(self, command, *, stdin, on_stdout, on_stderr, **kw):
        FakeConnection.log.append(unwrap(command))
        reply = FakeConnection.pull_reply
        if isinstance(reply, BaseException):
            raise reply
        code, out, err = reply
        on_stdout(out)
        on_stderr(err)
        return code

    def run(self, command, *, timeout=60, stdin=None):
        FakeConnection.log.append(unwrap(command))
        from sshexec.ssh import Result

        return Result(self.worker.name, 0, b"", b"")


@pytest.fixture
def fake(monkeypatch):
    FakeConnection.log = []
    monkeypatch.setattr(prepull_mod, "Connection", FakeConnection)
    monkeypatch.setenv("PW", "hunter2-registry")
    return FakeConnection


@pytest.mark.parametrize(
    "reply, ok",
    [
        ((0, INSPECT, b""), True),
        ((91, b"", b"manifest unknown: manifest unknown"), False),
        (ConnectionLost("w1", "connection to w1 lost"), False),
        (RuntimeError("a bug"), False),
    ],
    ids=["pulled", "pull-failed", "connection-lost", "unexpected-error"],
)
def test_credentials_live_in_a_run_directory_that_is_swept(fake, reply, ok):
    fake.pull_reply = reply
    (res,) = prepull_mod.prepull([W], "img:1", feed=Feed("lab", "127.0.0.1:5000", "ci", "PW"))
    assert res.ok is ok
    # The prepull's heartbeat (so that gc leaves it alone) is written first and dropped last.
    beat, pull, sweep, release = fake.log
    assert [c[3] for c in fake.log] == ["sshexec-beat", "sshexec-pull", "sshexec-sweep", "sshexec-release"]
    cfg = pull[8]
    # work_root/runs/<id>/<worker>/...: where a run's sweep, and `sshexec gc`, look.
    assert cfg.startswith("runs/prepull-") and cfg.split("/")[2:] == [W.name, "docker-config"]
    run_id = cfg.split("/")[1]
    assert sweep[4:7] == [W.work_root, run_id, W.name]
    assert beat[4:6] == release[4:6] == [W.work_root, run_id] and release[6] == "all"


def test_a_failed_pull_is_reported_not_hidden_by_the_sweep(fake):
    fake.pull_reply = (91, b"", b"manifest unknown: manifest unknown")
    (res,) = prepull_mod.prepull([W], "img:1")
    assert isinstance(res.error, PullError) and "not found" in res.error.message
