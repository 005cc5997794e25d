"""The idle probe: 5 s of silence by default; SSHEXEC_IDLE_PROBE (a knob for tests) sets another wait."""

import pytest

from sshexec.ssh import connection
from sshexec.ssh.connection import IDLE_PROBE, idle_probe_seconds


def test_the_default_is_five_seconds(monkeypatch):
    monkeypatch.delenv("SSHEXEC_IDLE_PROBE", raising=False)
    assert IDLE_PROBE == 5.0
    assert idle_probe_seconds() == 5.0
    monkeypatch.setenv("SSHEXEC_IDLE_PROBE", "  ")
    assert idle_probe_seconds() == 5.0


def test_the_knob_sets_another_wait(monkeypatch):
    monkeypatch.setenv("SSHEXEC_IDLE_PROBE", "0.5")
    assert idle_probe_seconds() == 0.5


@pytest.mark.parametrize("bad", ["0", "-1", "soon", "nan", "inf"])
def test_a_bad_value_names_the_variable_and_the_way_out(monkeypatch, bad):
    monkeypatch.setenv("SSHEXEC_IDLE_PROBE", bad)
    with pytest.raises(ValueError, match=r"SSHEXEC_IDLE_PROBE=.* is not a positive number of seconds; unset it for the default \(5 s\)"):
        idle_probe_seconds()


def test_stream_without_idle_probe_uses_the_knob(monkeypatch):
    """Connection.stream() resolves its idle_probe from the environment when none is given."""
    seen = {}

    def fake_pump(self, chan, stdin, keep, out, err, deadline, timeout, cancel, on_abort, on_channel, grace, idle_probe, preamble=b""):
        seen["idle_probe"] = idle_probe
        return 0

    class _Session:
        def __enter__(self):
            return object()

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(connection.Connection, "_pump", fake_pump)
    monkeypatch.setattr(connection.Connection, "session", lambda self, command, timeout, ready=None: _Session())
    conn = connection.Connection.__new__(connection.Connection)
    monkeypatch.setenv("SSHEXEC_IDLE_PROBE", "2")
    assert conn.stream("true", on_stdout=print, on_stderr=print) == 0 and seen["idle_probe"] == 2.0
    monkeypatch.delenv("SSHEXEC_IDLE_PROBE")
    assert conn.stream("true", on_stdout=print, on_stderr=print) == 0 and seen["idle_probe"] == 5.0
    assert conn.stream("true", on_stdout=print, on_stderr=print, idle_probe=7.0) == 0 and seen["idle_probe"] == 7.0
