"""What a new user meets in the first hour, against the real lab: a worker found through an
Include of ~/.ssh/config, a port that never speaks SSH, gc and locks on the lab's bastion, and
the real commands in a terminal of 80 columns."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import socket
import struct
import subprocess
import sys
import termios
import threading

import yaml

from sshexec.cli import ns

from labkit import REPO, inventory_file, sshexec, step, write_runbook


class SilentPort:
    """A port on 127.0.0.1 that accepts connections and never says a word (a hung sshd, a tarpit)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self):
        while not self._halt.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.held.append(conn)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._halt.set()
        self._thread.join(5)
        for c in self.held:
            c.close()
        self.sock.close()


def test_a_silent_port_gets_one_clear_message_from_check_check_worker_and_run(lab_env, tmp_path):
    with SilentPort() as mute:
        inv = inventory_file(tmp_path, lab_env, [{"name": "mute", "host": "127.0.0.1", "port": mute.port, "pools": ["quiet"], "connect_timeout": 2}])
        env = {**os.environ, "SSHEXEC_INVENTORY": str(inv)}
        said = f"127.0.0.1:{mute.port} sent no SSH banner within 2s"
        everyone = sshexec("check", env=env)
        one = sshexec("check", "--worker", "mute", env=env)
        one_json = sshexec("check", "--worker", "mute", "--json", env=env)
        rb = write_runbook(tmp_path / "rb.yaml", {"name": "quiet", "steps": [
            {**step("s", lab_env.image_ref("busybox"), "echo never", syntax="sh", pool="quiet"), "retries": {"attempts": 2, "delay": 0}},
        ]})  # fmt: skip
        run = sshexec("run", rb, "--json", env=env)
    for res in (everyone, one):
        assert res.returncode == 3, res.stdout + res.stderr
        assert said in " ".join((res.stdout + res.stderr).split()), res.stdout + res.stderr
        assert "mute" in res.stdout  # the table, for one worker too
    (health,) = json.loads(one_json.stdout)["workers"]
    assert health["error"]["error"] == "UnreachableError" and said in health["error"]["message"]
    assert run.returncode == 3, run.stdout + run.stderr
    (result,) = json.loads(run.stdout)["steps"]
    assert result["status"] == "error" and said in result["message"]
    assert result["attempts"] == 2  # infrastructure: retries: tried it again
    for res in (everyone, one, one_json, run):
        text = res.stdout + res.stderr
        assert "SSHException" not in text and "No existing session" not in text and "unexpected error" not in text


def test_a_worker_whose_block_is_in_an_included_ssh_config_file_is_reached(lab_env, tmp_path):
    """Include with a glob, relative and ~ paths, nested, and a `Host *` after it that must not win."""
    w1 = next(w for w in yaml.safe_load(lab_env.inventory_path.read_text())["workers"] if w["name"] == "w1")
    home = tmp_path / "home"
    ssh = home / ".ssh"
    (ssh / "config.d").mkdir(parents=True)
    (ssh / "nested").mkdir()
    (ssh / "config").write_text("Include config.d/*\n\nHost *\n  Port 1\n  HostName 192.0.2.1\n")
    (ssh / "config.d" / "50-lab").write_text("Include ~/.ssh/nested/*.conf\n")
    (ssh / "nested" / "w1.conf").write_text(f"Host lab-w1\n  HostName 127.0.0.1\n  Port {w1['port']}\n")
    kh = (lab_env.known_hosts_path).read_text()
    inv = inventory_file(tmp_path, lab_env, [{"name": "w1", "host": "lab-w1", "pools": ["linux"], "work_root": w1["work_root"]}], known_hosts=kh)
    env = {k: v for k, v in os.environ.items() if k != "SSHEXEC_SSH_CONFIG"}
    env.update(HOME=str(home), SSHEXEC_INVENTORY=str(inv))
    res = sshexec("check", "--json", env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    (health,) = json.loads(res.stdout)["workers"]
    assert health["healthy"], health
    # The included file is what made it work: without it, the Host * block after the Include is all there is.
    (ssh / "nested" / "w1.conf").unlink()
    gone = sshexec("check", "--json", env=env)
    assert gone.returncode == 3


def test_gc_and_locks_on_the_lab_leave_its_bastion_alone(lab_env):
    """The bastion is a jump host with no Docker: gc used to fail on it (exit 3), locks listed it."""
    for args in (("gc", "--dry-run"), ("gc",), ("locks",)):
        res = sshexec(*args, "--json")
        assert res.returncode == 0, res.stdout + res.stderr
        workers = [w["worker"] for w in json.loads(res.stdout)["workers"]]
        assert "bastion" not in workers and {"w1", "w2", "inner1"} <= set(workers)
    named = sshexec("locks", "--worker", "bastion", "--json")  # named, it is asked
    assert [w["worker"] for w in json.loads(named.stdout)["workers"]] == ["bastion"]


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def in_terminal(*args, columns: int = 80, rows: int = 30, timeout: float = 300) -> tuple[int, list[str]]:
    """`sshexec ARGS` in a real pseudo-terminal of `columns` x `rows`: its exit code and the lines it
    showed (colours and cursor moves taken out; a progress line redrawn in place counts as a line)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env.update(TERM="xterm-256color", NO_COLOR="1")
    proc = subprocess.Popen([sys.executable, "-m", "sshexec", *map(str, args)], stdin=slave, stdout=slave, stderr=slave, cwd=REPO, env=env,
                            close_fds=True, start_new_session=True)  # fmt: skip
    os.close(slave)
    seen = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], timeout)
            if not ready:
                raise AssertionError(f"sshexec {' '.join(map(str, args))}: nothing for {timeout}s; so far:\n{seen.decode(errors='replace')}")
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the program ended and closed the terminal
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
        code = proc.wait(timeout=60)
    text = ANSI.sub("", seen.decode("utf-8", "replace"))
    return code, [line for line in re.split(r"\r\n|\n|\r", text)]


def fit(lines: list[str], columns: int = 80) -> list[str]:
    return [line for line in lines if len(line.rstrip()) > columns]


def test_the_real_commands_fit_80_columns_in_a_terminal(lab_env, tmp_path):
    """Issue 23's "Must show" for 80 columns, the real program in a real 80x30 terminal: check, runs,
    locks, lab status, a run's summary, its dry run, logs and every --help; no line over 80, run
    ids and the commands to paste whole on a line, headers whole."""
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "eighty-columns", "steps": [
        step("pack", lab_env.image_ref("busybox"), "echo notes > notes.txt; new_sshexec_artifact notes.txt release-notes.txt", syntax="sh"),
        step("verify", lab_env.image_ref("busybox"), "fail_step 'the release notes of this build do not name the ticket that its change "
             "request links to, so nothing was deployed to any of the workers'", syntax="sh"),
    ]})  # fmt: skip
    code, ran = in_terminal("run", rb, "--worker", "w1")
    assert code == 1, "\n".join(ran)
    run_id = json.loads(sshexec("runs", "--json", "--limit", "1").stdout)[0]["id"]
    for whole in (f"run {run_id}: eighty-columns", f"sshexec artifact {run_id} w1/release-notes.txt", f"sshexec logs {run_id}",
                  f"sshexec run --retry-failed {run_id}"):  # fmt: skip
        assert any(whole in line for line in ran), (whole, ran)
    said = " ".join(" ".join(ran).split())
    assert "the release notes of this build do not name the ticket that its change request links to, so nothing was deployed to any of the workers" in said
    shown = {"run": ran}
    for args in (("check",), ("check", "--wide"), ("runs",), ("locks",), ("lab", "status"), ("logs", run_id), ("run", rb, "--worker", "w1", "--dry-run"),
                 ("db", "status"), ("history", "prune", "--older-than", "36500", "--dry-run"), ("--help",),
                 *(("--help", name) for name in sorted(ns.task_names))):  # fmt: skip
        code, shown[" ".join(map(str, args))] = in_terminal(*args)
        assert code == 0, (args, shown[" ".join(map(str, args))])
    for name, lines in shown.items():
        assert not fit(lines), (name, fit(lines))
    headers = {"check": "worker address status docker free problem", "runs": "run id runbook started time status message",
               "locks": "worker name holder since state operator", "lab status": "worker container address state docker daemon"}  # fmt: skip
    for name, header in headers.items():
        assert any(" ".join(line.split()) == header for line in shown[name]), (name, shown[name])
    assert any(run_id in line for line in shown["runs"])
    assert any(f"sshexec artifact {run_id} w1/release-notes.txt" in line for line in shown[f"logs {run_id}"])
    w1 = next(w for w in json.loads(sshexec("lab", "status", "--json").stdout)["workers"] if w["name"] == "w1")
    assert any(f"127.0.0.1:{w1['port']}" in line and f"{lab_env.name}-w1" in line for line in shown["lab status"])
