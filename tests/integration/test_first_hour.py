"""What a new user meets in the first hour, against the real lab: a worker found through an
Include of ~/.ssh/config, a port that never speaks SSH, gc and locks on the lab's bastion."""

from __future__ import annotations

import json
import os
import socket
import threading

import yaml

from labkit import inventory_file, sshexec, step, write_runbook


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
