"""The agent's pieces that need no agent: frames and descriptors over a socket pair, paths, identity, when the client hands over."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from labkit import REPO

from sshexec.agent import client, wire


def test_frames_round_trip_with_descriptors(tmp_path):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    target = tmp_path / "out.txt"
    with open(target, "w") as fh, a, b:
        wire.send(a, wire.REQUEST, {"argv": ["sshexec", "run", "x"], "env": {"K": "v" * 100_000}}, fds=[fh.fileno()])
        wire.send(a, wire.EXIT, {"code": 7})
        kind, payload, fds = wire.recv(b, with_fds=3)
        assert kind == wire.REQUEST and payload["argv"] == ["sshexec", "run", "x"] and len(payload["env"]["K"]) == 100_000
        assert len(fds) == 1 and fds[0] != fh.fileno()
        os.write(fds[0], b"through the passed descriptor\n")
        os.close(fds[0])
        assert wire.recv(b) == (wire.EXIT, {"code": 7}, [])
        a.close()
        assert wire.recv(b) is None  # a clean end between frames
    assert target.read_text() == "through the passed descriptor\n"


def _head(kind: int, size: int) -> bytes:
    """A frame's head as the wire's format says (kind: 1 byte; size: 4 bytes, big-endian), made independently of wire.py."""
    return struct.pack(">BI", kind, size)


def test_a_frame_cut_short_or_too_big_is_an_error():
    a, b = socket.socketpair()
    with a, b:
        a.sendall(_head(wire.HELLO, 100) + b"x" * 10)
        a.close()
        with pytest.raises(wire.WireError, match="ended inside a frame"):
            wire.recv(b)
    a, b = socket.socketpair()
    with a, b:
        a.sendall(_head(wire.HELLO, wire.MAX_FRAME + 1))
        with pytest.raises(wire.WireError, match="a frame of"):
            wire.recv(b)
    a, b = socket.socketpair()
    with a, b:
        a.sendall(_head(wire.HELLO, 3) + b"\xff\xfe\xfd")
        with pytest.raises(wire.WireError, match="unreadable"):
            wire.recv(b)


def test_the_peer_uid_comes_from_the_kernel():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        assert wire.peer_uid(b) == (os.getpid(), os.getuid())


@pytest.fixture
def short_tmp():
    """A directory with a short path: an agent's socket path must fit sun_path's 108 bytes, and pytest's
    tmp_path under a plain `pytest -n` (popen-gwN/test_name0/...) does not always leave room for it."""
    d = Path(tempfile.mkdtemp(prefix="sx-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_paths_live_in_a_private_directory(short_tmp, monkeypatch):
    tmp_path = short_tmp
    monkeypatch.setenv("SSHEXEC_HOME", str(tmp_path / "home"))
    paths = wire.Paths.current()
    assert paths.dir == str(tmp_path / "home" / "agent") and paths.socket.startswith(paths.dir + "/agent-")
    paths.make_dir()
    assert stat.S_IMODE(os.stat(paths.dir).st_mode) == 0o700
    os.chmod(paths.dir, 0o755)
    paths.make_dir()  # widened by someone: narrowed again
    assert stat.S_IMODE(os.stat(paths.dir).st_mode) == 0o700
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    assert wire.Paths.current().dir == str(tmp_path / "run" / "sshexec")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / ("x" * 90)))
    assert wire.Paths.current().dir == f"/tmp/sshexec-{os.getuid()}", "a socket path past sun_path's 108 bytes falls back"


def test_a_symlinked_directory_is_refused(short_tmp, monkeypatch):
    tmp_path = short_tmp
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "sshexec").symlink_to(tmp_path / "elsewhere")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    with pytest.raises(OSError, match="will not use it"):
        wire.Paths.current().make_dir()


def test_identity_follows_the_code(tmp_path, monkeypatch):
    copy = tmp_path / "sshexec"
    shutil.copytree(wire.PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(wire, "PACKAGE", str(copy))
    first = wire.identity()
    assert wire.identity() == first
    (copy / "__pycache__").mkdir(exist_ok=True)
    (copy / "__pycache__" / "x.pyc").write_bytes(b"compiled")
    assert wire.identity() == first, "compiled files are not the code"
    module = copy / "run" / "runner.py"
    st = module.stat()
    os.utime(module, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert wire.identity() != first, "an edited module is another sshexec"


@pytest.mark.parametrize("argv, env", [
    (["run", "rb.yaml"], {"SSHEXEC_AGENT": "0"}),
    (["check"], {"SSHEXEC_AGENT": "off"}),
    (["lab", "up"], {"SSHEXEC_AGENT": "auto"}),
    (["trust", "--worker", "w1"], {}),
    ([], {}),
    (["--help", "run"], {}),
])  # fmt: skip
def test_what_stays_in_process(argv, env, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.delenv("SSHEXEC_AGENT", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert client.delegate(argv) is None
    assert not (tmp_path / "sshexec").exists(), "no agent was started (nor its directory made)"


def test_the_thin_client_imports_only_the_standard_library():
    """What `sshexec run` imports before it hands the command over: the standard library, sshexec (not its errors: lazy), agent."""
    code = "import sys; before = set(sys.modules); from sshexec._entry import main; from sshexec.agent import client; print('\\n'.join(sorted(set(sys.modules) - before)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    ours = {m for m in out if m.split(".")[0] == "sshexec"}
    assert ours == {"sshexec", "sshexec._entry", "sshexec.agent", "sshexec.agent.client", "sshexec.agent.wire"}
    foreign = {m for m in out if m.split(".")[0] not in sys.stdlib_module_names and m.split(".")[0] != "sshexec"}
    assert not foreign, f"the client's path imports more than the standard library: {sorted(foreign)}"


def test_the_thin_client_imports_no_costly_standard_module():
    """Not even the standard library's costly modules: typing, re, enum (under signal and socket), selectors, pathlib;
    nor the small ones a frame, a lock or a lazy attribute can do without (importlib with warnings, struct, fcntl, types,
    __future__: its annotations evaluate on 3.11 as they are).
    Asked of an interpreter without site (-S), so that nothing is imported before: an installed copy's start-up."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); before = set(sys.modules); from sshexec._entry import main; "
            "from sshexec.agent import client; print('\\n'.join(sorted(set(sys.modules) - before)))")  # fmt: skip
    out = set(subprocess.run([sys.executable, "-S", "-c", code, str(REPO)], capture_output=True, text=True, check=True).stdout.split())
    assert "sshexec.agent.client" in out
    costly = {"typing", "re", "enum", "functools", "collections", "selectors", "socket", "signal", "pathlib", "dataclasses", "inspect",
              "importlib", "warnings", "struct", "fcntl", "types", "__future__"}  # fmt: skip
    assert not out & costly, f"the thin client imports {sorted(out & costly)}"
