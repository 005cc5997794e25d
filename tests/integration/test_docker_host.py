"""`docker_host:` reaches a daemon whose socket is not at the default path, on every docker command,
never through a login profile; `docker: "sudo -n docker"` works with it.

The lab's inner1 (behind the bastion) has its daemon's socket at /run/sx/docker.sock
and nothing at /var/run/docker.sock; its inventory entry says
`docker_host: unix:///run/sx/docker.sock`. Its user's ~/.profile and ~/.bashrc
are given a wrong DOCKER_HOST for these tests: a docker command that went
without --host would fail (or go to the wrong daemon) and the test with it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
from labkit import REPO, docker, extra_worker, inventory_file, leftovers, push_fresh, sshexec, step, worker_docker, worker_exec, write_runbook

pytestmark = pytest.mark.usefixtures("no_leftovers")

WRONG = "unix:///nonexistent/wrong-docker.sock"
SOCKET = "unix:///run/sx/docker.sock"


@pytest.fixture
def wrong_docker_host_in_profiles(lab_env):
    """inner1's deploy user gets DOCKER_HOST=<wrong> from ~/.profile and ~/.bashrc (before its
    "not interactive: return"): what a non-login SSH command's bash reads too."""
    container = f"{lab_env.name}-inner1"
    files = ("/home/deploy/.profile", "/home/deploy/.bashrc")
    for f in files:
        docker("exec", container, "cp", "-p", f, f + ".sshexec-test")
        docker("exec", container, "sh", "-c", f'{{ echo "export DOCKER_HOST={WRONG}"; cat "$0.sshexec-test"; }} > "$0"', f)
    try:
        yield
    finally:
        for f in files:
            docker("exec", container, "mv", f + ".sshexec-test", f)


@pytest.fixture
def docker_calls(lab_env):
    """Every docker command run on inner1, as its argv: the docker CLI there is wrapped to log it."""
    container = f"{lab_env.name}-inner1"
    log = f"/tmp/docker-calls-{uuid.uuid4().hex[:8]}"
    wrapper = f'#!/bin/sh\nprintf "%s\\n" "$*" >> {log}\nexec /usr/bin/docker.real "$@"\n'
    docker("exec", container, "sh", "-c", f'mv /usr/bin/docker /usr/bin/docker.real && printf "%s" "$0" > /usr/bin/docker && chmod 755 /usr/bin/docker && : > {log} && chmod 666 {log}', wrapper)
    try:
        yield lambda: [line for line in worker_exec(lab_env, "inner1", "cat", log).splitlines() if line]
    finally:
        docker("exec", container, "sh", "-c", f"mv /usr/bin/docker.real /usr/bin/docker; rm -f {log}")


def verb(call: str) -> str:
    """`--host H --config C login ...` -> login."""
    words = call.split()
    while words and words[0].startswith("--"):
        words = words[2:]
    return words[0] if words else ""


def remote_env(inventory, worker: str, name: str) -> str:
    """What a plain command sees over SSH on the worker (sshexec's own connection, no --host anywhere)."""
    from sshexec.config.inventory import load_inventory
    from sshexec.ssh import Connection

    with Connection(load_inventory(inventory).worker(worker)) as conn:
        return conn.run(f"printenv {name} || true").text().strip()


def events(lab, worker: str, since: int, *filters: str) -> list[str]:
    args = [a for f in filters for a in ("--filter", f)]
    until = str(int(time.time()) + 1)
    return worker_docker(lab, worker, "events", "--since", str(since), "--until", until, *args, "--format", "{{.Action}} {{.Actor.ID}}").stdout.splitlines()


def test_docker_host_on_every_docker_command_never_a_login_profile(lab_env, tmp_path, wrong_docker_host_in_profiles, docker_calls):
    inv = lab_env.inventory_path
    # The trap is armed: a command over SSH gets the wrong DOCKER_HOST, and the default socket is absent.
    assert remote_env(inv, "inner1", "DOCKER_HOST") == WRONG
    assert worker_exec(lab_env, "inner1", "sh", "-c", "test -e /var/run/docker.sock && echo there || echo absent").strip() == "absent"
    ref = push_fresh(lab_env)
    since = int(time.time()) - 1
    try:
        # check: the daemon it reached, named by its endpoint and docker info.
        res = sshexec("check", "--worker", "inner1", "--json")
        assert res.returncode == 0, res.stdout + res.stderr
        (w,) = json.loads(res.stdout)["workers"]
        assert w["endpoint"] == SOCKET and w["docker_root"] == str(lab_env.daemon("inner1").data_root) and w["daemon_id"]
        assert SOCKET in sshexec("check", "--worker", "inner1", "--wide").stdout

        # prepull with a feed: login and pull on inner1's daemon.
        pre = sshexec("prepull", ref, "--feed", "lab", "--worker", "inner1", "--json")
        assert pre.returncode == 0, pre.stdout + pre.stderr
        assert [e.split()[0] for e in events(lab_env, "inner1", since, "type=image", "event=pull")] == ["pull"]
        worker_docker(lab_env, "inner1", "rmi", ref)

        # run: pull with a feed, inspect, run, artifacts, cleanup of a root-owned file tree.
        rb = write_runbook(tmp_path / "ok.yaml", {"name": "dh", "steps": [step("s", ref, r"""
            echo "ran on $SSHEXEC_WORKER"; mkdir -p d/e; echo x > d/e/f; chmod 500 d/e; echo art > out.txt; new_sshexec_artifact out.txt
        """, syntax="sh", pool="internal", feed="lab", pull="always")]})  # fmt: skip
        ok = sshexec("run", rb, "--json")
        assert ok.returncode == 0, ok.stdout + ok.stderr
        data = json.loads(ok.stdout)
        assert data["steps"][0]["pulled"] == [ref] and [a["name"] for a in data["steps"][0]["artifacts"]] == ["out.txt"]
        assert [e.split()[0] for e in events(lab_env, "inner1", since, "type=image", "event=pull")] == ["pull", "pull"]

        # A timeout: the container is stopped and the step directory cleaned, with --host.
        slow = write_runbook(tmp_path / "slow.yaml", {"name": "dh", "steps": [step("s", ref, "mkdir -p a/b; chmod 500 a/b; sleep 300", syntax="sh", pool="internal", timeout=3)]})
        t = sshexec("run", slow, "--json")
        assert t.returncode == 124, t.stdout + t.stderr
        timed_out = json.loads(t.stdout)["run_id"]
        assert leftovers(lab_env, [timed_out]) == []

        # Ctrl-C: the container is stopped and the run swept, on inner1's daemon.
        long = write_runbook(tmp_path / "long.yaml", {"name": "dh", "steps": [step("s", ref, "echo started; mkdir -p a/b; chmod 500 a/b; sleep 300", syntax="sh", pool="internal")]})
        proc = subprocess.Popen([sys.executable, "-m", "sshexec", "run", str(long)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
        seen = b""
        end = time.monotonic() + 60
        while b"| started" not in seen and time.monotonic() < end and proc.poll() is None:
            seen += proc.stdout.readline()
        assert b"inner1/s | started" in seen, seen
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
        assert proc.returncode == 130
        cancelled = json.loads(sshexec("runs", "--json").stdout)[0]["id"]
        assert leftovers(lab_env, [cancelled]) == []
        # Every container of these runs was created on inner1's daemon, found there by the cleanups.
        created = events(lab_env, "inner1", since, "type=container", "event=create")
        assert len(created) >= 3, created
        # And every docker command sshexec ran there named the daemon itself.
        calls = docker_calls()
        verbs = {verb(c) for c in calls}
        assert {"version", "info", "login", "pull", "image", "run", "stop", "rm", "ps"} <= verbs, (verbs, calls)
        assert "context" not in verbs  # check knows the endpoint: docker_host
        assert [c for c in calls if not c.startswith(f"--host {SOCKET} ")] == [], calls
    finally:
        worker_docker(lab_env, "inner1", "rmi", "-f", ref, check=False)


def test_sudo_docker_with_docker_host(lab_env, tmp_path):
    """nodocker may use docker only through sudo; its daemon's socket is only at /run/sx/docker.sock (w2's daemon)."""
    lab = lab_env
    work = lab.work_base / f"sudo-{uuid.uuid4().hex[:6]}"
    with extra_worker(lab, daemon_of="w2", socket_link=False, work=work, owner=1001) as xw:
        base = {"name": xw.name, "host": "127.0.0.1", "port": xw.port, "pools": ["solo"], "user": "nodocker", "work_root": str(work)}
        kh = xw.host_keys()
        sudo = inventory_file(tmp_path, lab, [{**base, "docker": "sudo -n /usr/bin/docker", "docker_host": SOCKET}], known_hosts=kh, name="sudo.yaml")
        without = inventory_file(tmp_path, lab, [{**base, "docker": "sudo -n /usr/bin/docker"}], known_hosts=kh, name="without.yaml")
        res = sshexec("check", "--inventory", sudo, "--json")
        assert res.returncode == 0, res.stdout + res.stderr
        (w,) = json.loads(res.stdout)["workers"]
        assert w["endpoint"] == SOCKET and w["docker_root"] == str(lab.daemon("w2").data_root)
        # Without docker_host, sudo's docker looks at the default socket, where there is none.
        bad = sshexec("check", "--inventory", without, "--json")
        assert bad.returncode == 3 and json.loads(bad.stdout)["workers"][0]["error"]["error"] == "DaemonDown"

        since = int(time.time()) - 1
        rb = write_runbook(tmp_path / "rb.yaml", {"name": "sudo", "steps": [
            step("s", lab.image_ref("busybox"), "id -u; touch made-by-root", syntax="sh", pool="solo", feed="lab", pull="always"),
        ]})  # fmt: skip
        run = sshexec("run", rb, "--json", env={**os.environ, "SSHEXEC_INVENTORY": str(sudo)})
        assert run.returncode == 0, run.stdout + run.stderr
        assert f"{xw.name}/s | 0" in run.stderr
        assert [e.split()[0] for e in events(lab, "w2", since, "type=container", "event=create")], "the step ran on w2's daemon"
        # The root-owned file was cleaned up through sudo docker too.
        assert not (work / "runs").exists() or list((work / "runs").iterdir()) == []
    subprocess.run(["rm", "-rf", str(work)])
