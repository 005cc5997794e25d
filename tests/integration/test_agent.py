"""The resident agent with real processes: its socket and uid check, restarts (crash, new version), the client's
kill -9, the client's environment and secrets, known_hosts changes, and output identical to the in-process path."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import secrets
import shutil
import signal
import stat
import struct
import subprocess
import sys
import termios
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from agentkit import RunningAgent, agent_memory_holds, alive, own_agent, sx, wait_gone
from labkit import REPO, leftovers, step, wait_for_line, write_runbook

from sshexec.agent import wire


@pytest.fixture
def agent(tmp_path_factory, monkeypatch):
    """An agent of this test's own, not started yet: some tests kill or replace it."""
    yield from own_agent(tmp_path_factory, monkeypatch, up=False)


def in_process_env() -> dict:
    return {**os.environ, "SSHEXEC_AGENT": "0"}


# -- the agent's life --------------------------------------------------------------------------------


def test_start_status_stop(agent):
    res = sx("agent", "start", "--json")
    assert res.returncode == 0, res.stderr
    up = json.loads(res.stdout)
    assert up["running"] and up["current"] and alive(up["pid"]) and up["rss_kib"] > 0
    sock = Path(up["socket"])
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600 and stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
    res = sx("agent", "status")
    assert res.returncode == 0 and f"pid {up['pid']}" in res.stderr and "connections kept" in res.stderr
    again = json.loads(sx("agent", "start", "--json").stdout)
    assert again["pid"] == up["pid"], "start leaves a running agent of this sshexec alone"
    res = sx("agent", "stop")
    assert res.returncode == 0 and f"pid {up['pid']}" in res.stderr
    assert wait_gone(up["pid"]) and not sock.exists()
    assert json.loads(sx("agent", "status", "--json").stdout)["running"] is False


def test_first_command_runs_in_process_and_starts_the_agent(agent):
    assert agent.status() is None
    res = sx("runs", "--json")
    assert res.returncode == 0 and res.stdout.strip() == "[]"
    now = wait_status(agent)
    assert now["served"] == 0, "the cold command ran in its own process"
    res = sx("runs", "--json")
    assert res.returncode == 0 and res.stdout.strip() == "[]"
    assert agent.status()["served"] == 1


def wait_status(agent: RunningAgent, limit: float = 60) -> dict:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        now = agent.status()
        if now is not None:
            return now
        time.sleep(0.05)
    raise AssertionError(f"no agent answered within {limit}s")


def test_a_crashed_agent_is_replaced_and_the_command_still_succeeds(agent):
    first = agent.ensure_up()
    os.kill(first["pid"], signal.SIGKILL)
    assert wait_gone(first["pid"])
    assert Path(first["socket"]).exists(), "a crash leaves its socket behind"
    res = sx("logs", "nope")
    assert res.returncode == 2 and "no run 'nope'" in res.stderr
    second = wait_status(agent)
    assert second["pid"] != first["pid"]
    res = sx("logs", "nope")
    assert res.returncode == 2 and "no run 'nope'" in res.stderr and agent.status()["served"] == 1


def test_a_new_version_replaces_the_agent(agent, tmp_path, monkeypatch):
    # "Upgrading" a copy of the package, run from its own directory: touching the checkout's own modules
    # would change the identity of every sshexec on this machine, and end the agents of test processes
    # running beside this one (pytest-xdist). The copy is an installation of its own: its own socket.
    from sshexec.agent import client

    src = tmp_path / "src"
    shutil.copytree(REPO / "sshexec", src / "sshexec", ignore=shutil.ignore_patterns("__pycache__"))
    with monkeypatch.context() as m:
        m.setattr(wire, "PACKAGE", str(src / "sshexec"))
        paths = wire.Paths(agent.paths().dir)
    copy = SimpleNamespace(status=lambda: client.status(paths))
    try:
        res = sx("agent", "start", "--json", cwd=src)
        assert res.returncode == 0, res.stderr
        old = wait_status(copy)
        assert old["identity"] != wire.identity() and agent.status() is None, "the agent runs the copy's code, not the checkout's"
        module = src / "sshexec" / "agent" / "__init__.py"
        st = module.stat()
        os.utime(module, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        res = sx("runs", "--json", cwd=src)
        assert res.returncode == 0 and res.stdout.strip() == "[]"
        assert wait_gone(old["pid"]), "the old agent ended"
        new = wait_status(copy)
        assert new["pid"] != old["pid"] and new["identity"] not in (old["identity"], wire.identity())
        assert sx("runs", "--json", cwd=src).returncode == 0 and copy.status()["served"] == 1
    finally:
        last = client.status(paths)
        client.stop(paths)
        assert last is None or wait_gone(last["pid"])


# -- who may talk to it --------------------------------------------------------------------------------

PROBE = r"""
import marshal, socket, struct, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("EACCES"); sys.exit(0)
body = marshal.dumps({"op": "status", "id": ""})
try:
    s.sendall(struct.pack(">BI", 1, len(body)) + body)
except OSError:
    pass  # a refusing agent may have closed already: its answer is still there to read
head = s.recv(5)
kind, size = struct.unpack(">BI", head)
data = b""
while len(data) < size:
    data += s.recv(size - len(data))
print(kind, marshal.loads(data))
"""


def test_a_client_of_another_uid_is_refused_and_logged(tmp_path_factory, monkeypatch):
    user = f"sxa{uuid.uuid4().hex[:8]}"
    base = Path(tempfile_dir())
    a = RunningAgent(base / "run")
    for k, v in a.env().items():
        monkeypatch.setenv(k, v)
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", user], check=True)
    try:
        for d in (base, base / "run"):
            os.chmod(d, 0o711)
        up = a.ensure_up()
        python = shutil.which("python3", path="/usr/bin") or sys.executable

        def probe() -> str:
            return subprocess.run([python, "-I", "-c", PROBE, up["socket"]], user=user, capture_output=True, text=True, timeout=30, cwd="/").stdout

        assert probe().strip() == "EACCES", "the socket's directory is 0700: another user cannot even connect"
        # Even if the socket were opened up by mistake, the agent reads the caller's uid from the kernel.
        os.chmod(Path(up["socket"]).parent, 0o711)
        os.chmod(up["socket"], 0o666)
        out = probe()
        assert out.startswith(f"{wire.REFUSED} ") and "serves uid 0 only" in out, out
        # The client's own code, as that user (the system's Python: the checkout's virtualenv is root's), is told in words.
        hand = ("import socket, sys; from sshexec.agent import client, wire; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
                "print(client._hand_over(s, wire.Paths(sys.argv[2]), 'id', ['runs'], '/'))")  # fmt: skip
        res = subprocess.run([python, "-c", hand, up["socket"], str(Path(up["socket"]).parent)], user=user, capture_output=True, text=True,
                             timeout=60, cwd="/", env={"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO)})  # fmt: skip
        assert res.stdout.strip() == "3" and "refused this command" in res.stderr and "SSHEXEC_AGENT=0" in res.stderr, res.stderr
        uid = int(subprocess.run(["id", "-u", user], capture_output=True, text=True, check=True).stdout)
        log = Path(up["log"]).read_text()
        assert log.count(f"refused a client of uid {uid}") == 2
        assert a.status()["served"] == 0
    finally:
        left = a.stop()
        subprocess.run(["userdel", user], check=False)
        shutil.rmtree(base, ignore_errors=True)
    assert not left, left


def tempfile_dir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="sxa-")


# -- the same program, through the agent ------------------------------------------------------------------


def on_a_terminal(args, env, cols=97) -> tuple[int, bytes]:
    """`sshexec ARGS` with stdin, stdout and stderr on a pseudo-terminal COLS wide: (exit code, what the terminal got)."""
    main, side = pty.openpty()
    fcntl.ioctl(side, termios.TIOCSWINSZ, struct.pack("HHHH", 30, cols, 0, 0))
    env = {k: v for k, v in env.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
    env["TERM"] = "xterm-256color"
    proc = subprocess.Popen([sys.executable, "-m", "sshexec", *args], stdin=side, stdout=side, stderr=side, cwd=REPO, env=env)
    os.close(side)
    out = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # EIO: every writer closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(main)
    return proc.wait(timeout=60), out


def test_a_terminal_looks_the_same_through_the_agent(agent, tmp_path):
    agent.ensure_up()
    for args in (["runs"], ["logs", "nope"], ["check", "--inventory", str(tmp_path / "none.yaml")]):
        here = on_a_terminal(args, in_process_env())
        there = on_a_terminal(args, os.environ.copy())
        assert here == there, args
        assert b"\x1b[" in here[1], "colours on a terminal"
    assert agent.status()["served"] == 3


def test_json_and_pipes_are_the_same_through_the_agent(agent):
    agent.ensure_up()
    for args in (["runs", "--json"], ["logs"], ["runs", "--status", "nope"]):
        here, there = sx(*args, env=in_process_env()), sx(*args)
        assert (here.returncode, here.stdout, here.stderr) == (there.returncode, there.stdout, there.stderr), args
    assert agent.status()["served"] == 3


def test_the_working_directory_is_the_clients(agent, tmp_path):
    agent.ensure_up()
    (tmp_path / "inventory").mkdir()
    (tmp_path / "inventory" / "workers.yaml").write_text("workers: [oops\n")
    res = sx("check", cwd=tmp_path)
    assert res.returncode == 2 and "inventory/workers.yaml" in res.stderr, res.stderr
    assert agent.status()["served"] == 1


# -- with the lab: secrets, kill -9, known_hosts ----------------------------------------------------------


def test_the_clients_secret_reaches_the_step_and_the_agents_environment_never(lab_env, tmp_path, monkeypatch):
    from_agent, from_client = "agent-" + secrets.token_hex(12), "client-" + secrets.token_hex(12)
    a = RunningAgent(tmp_path / "run")
    for k, v in a.env().items():
        monkeypatch.setenv(k, v)
    # The agent starts from an environment that holds a value of its own for the secret.
    res = a.sshexec("agent", "start", env={**os.environ, "API_TOKEN": from_agent})
    assert res.returncode == 0, res.stderr
    up = a.status()
    try:
        script = f'if [ "$API_TOKEN" = "{from_client}" ]; then echo got-the-clients; elif [ -n "$API_TOKEN" ]; then echo got-another; fi'
        rb = write_runbook(tmp_path / "rb.yaml", {"name": "sec", "sensitive_variables": {"API_TOKEN": {"env": "API_TOKEN"}},
                                                  "steps": [step("s", lab_env.image_ref("busybox"), script, syntax="sh")]})  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k != "API_TOKEN"}
        res = sx("run", rb, env={**env, "API_TOKEN": from_client})
        assert res.returncode == 0, res.stderr
        assert "got-the-clients" in res.stdout and from_client not in res.stdout + res.stderr
        # Without it in the client's environment, the run stops as it would in-process: the agent's value is not used.
        res = sx("run", rb, env=env)
        here = sx("run", rb, env={**env, "SSHEXEC_AGENT": "0"})
        assert res.returncode == here.returncode == 2 and "API_TOKEN" in res.stderr and res.stderr == here.stderr
        assert "got-" not in res.stdout
        assert a.status()["served"] == 2 and a.status()["pid"] == up["pid"]
        # What the agent keeps after those commands: neither the client's secret, nor (never given it) its own.
        assert not agent_memory_holds(up["pid"], from_client.encode())
        assert not agent_memory_holds(up["pid"], from_agent.encode())
        assert agent_memory_holds(up["pid"], up["socket"].encode()), "the memory scan finds what is there"
    finally:
        assert not a.stop()


def test_kill_9_of_the_client_cancels_the_run_and_leaves_nothing(lab_env, tmp_path, monkeypatch):
    from sshexec.store.history import History

    a = RunningAgent(tmp_path / "run")
    for k, v in a.env().items():
        monkeypatch.setenv(k, v)
    a.ensure_up()
    try:
        rb = write_runbook(tmp_path / "rb.yaml", {"name": "k9", "steps": [step("long", lab_env.image_ref("busybox"), "echo started; sleep 300", syntax="sh")]})
        proc = subprocess.Popen([sys.executable, "-m", "sshexec", "run", str(rb)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
        wait_for_line(proc, "| started")
        (child,) = a.status()["running"]
        (run,) = History().runs(10)
        assert run.pid == child["pid"], "the run is the agent's child"
        assert leftovers(lab_env, [run.id]), "the step's container runs"
        t0 = time.monotonic()
        proc.kill()
        proc.wait(timeout=10)
        assert wait_gone(child["pid"], 60), "the command's child ended"
        print(f"client kill -9 to the child's end (the run cancelled, its worker cleaned): {time.monotonic() - t0:.2f}s")
        (run,) = History().runs(10)
        assert run.status == "cancelled", run
        assert leftovers(lab_env, [run.id]) == []
        proc.stdout.close()
        proc.stderr.close()
    finally:
        assert not a.stop()


def test_a_changed_known_hosts_refuses_the_worker_through_the_agent(lab_env, tmp_path, agent):
    agent.ensure_up()
    data = yaml.safe_load(lab_env.inventory_path.read_text())
    kh = tmp_path / "known_hosts"
    kh.write_text(lab_env.known_hosts_path.read_text())
    data["defaults"]["identity_file"] = str(lab_env.key_path)
    data["defaults"]["known_hosts"] = str(kh)
    inv = tmp_path / "inv.yaml"
    inv.write_text(yaml.safe_dump(data))
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "kh", "steps": [step("s", lab_env.image_ref("busybox"), "echo ran", syntax="sh")]})
    first = sx("run", rb, "--worker", "w1", "--inventory", inv)
    assert first.returncode == 0 and "ran" in first.stdout, first.stderr
    # w1's entries now name another key: the next command must not reach w1 at all.
    w1 = next(w for w in data["workers"] if w["name"] == "w1")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    other = " ".join((tmp_path / "other.pub").read_text().split()[:2])
    host = f"[{w1['host']}]:{w1['port']}"
    lines = [ln for ln in kh.read_text().splitlines() if not ln.startswith(host + " ")]
    kh.write_text("\n".join([*lines, f"{host} {other}"]) + "\n")
    res = sx("run", rb, "--worker", "w1", "--inventory", inv, "--json")
    assert res.returncode == 3, res.stderr
    (s,) = json.loads(res.stdout)["steps"]
    assert s["error"]["error"] == "ChangedHostKey" and "| ran" not in res.stdout + res.stderr
    assert agent.status()["served"] == 2


def test_an_idle_agent_ends_by_itself_and_one_whose_socket_is_gone_too(tmp_path, monkeypatch):
    a = RunningAgent(tmp_path / "run")
    for k, v in a.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("SSHEXEC_AGENT_IDLE", "1")
    up = a.ensure_up()
    try:
        assert up["idle_limit"] == 1
        assert wait_gone(up["pid"], 30), "ended after a second without a command"
        assert not Path(up["socket"]).exists(), "and removed its socket"
        assert "idle for 1 s: ending" in Path(up["log"]).read_text()
        monkeypatch.setenv("SSHEXEC_AGENT_IDLE", "600")
        up = a.ensure_up()
        os.unlink(up["socket"])  # its directory cleaned away: nothing could reach it any more
        assert wait_gone(up["pid"], 30)
        assert "the socket was removed: ending" in Path(up["log"]).read_text()
    finally:
        if alive(up["pid"]):
            os.kill(up["pid"], signal.SIGTERM)


LISTENER = r"""
import os, socket, sys
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
os.chmod(sys.argv[1], 0o666)
s.listen(1)
print("listening", flush=True)
c, _ = s.accept()
c.settimeout(5)
try:
    data = c.recv(65536)
except OSError:
    data = b""
print("received", len(data), flush=True)
"""


def test_the_client_sends_nothing_to_a_socket_another_user_serves(tmp_path, monkeypatch):
    """Someone else's process listening where the agent's socket would be (a planted socket) gets not a byte."""
    user = f"sxa{uuid.uuid4().hex[:8]}"
    base = Path(tempfile_dir())
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", user], check=True)
    listener = None
    try:
        os.chmod(base, 0o777)
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(base))
        monkeypatch.setenv("SSHEXEC_AGENT", "auto")
        paths = wire.Paths.current()
        os.makedirs(paths.dir, mode=0o777)
        os.chmod(paths.dir, 0o777)
        python = shutil.which("python3", path="/usr/bin") or sys.executable
        listener = subprocess.Popen([python, "-I", "-c", LISTENER, paths.socket], user=user, stdout=subprocess.PIPE, text=True, cwd="/")
        assert listener.stdout.readline().strip() == "listening"
        res = sx("runs", "--json", env={**os.environ, "SSHEXEC_HOME": str(tmp_path / "home")})
        assert res.returncode == 0 and res.stdout.strip() == "[]", res.stderr  # ran in-process instead
        assert "not by you: not using it" in res.stderr
        out, _ = listener.communicate(timeout=30)
        assert out.strip() == "received 0", out
        # The command started an agent of its own there (the directory is ours): it replaced the planted socket.
        from sshexec.agent import client

        assert client.wait_until_up(paths)["pid"] and client.stop(paths)
    finally:
        if listener is not None and listener.poll() is None:
            listener.kill()
            listener.wait()
        subprocess.run(["userdel", user], check=False)
        shutil.rmtree(base, ignore_errors=True)
