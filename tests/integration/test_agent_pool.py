"""The agent keeps SSH connections warm between commands (issue 22): counted at the worker's own sshd, dropped when
known_hosts or a key file changes, never holding a command's secret, never reused after a kill -9 of its client."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time

import pytest
import yaml

from agentkit import RunningAgent, agent_memory_holds, alive, own_agent, sx, wait_gone
from labkit import REPO, docker, leftovers, step, wait_for_line, write_runbook

pytestmark = pytest.mark.integration


@pytest.fixture
def agent(tmp_path_factory, monkeypatch):
    yield from own_agent(tmp_path_factory, monkeypatch)


def settled(agent: RunningAgent, limit: float = 30) -> dict:
    """The agent's status once no child is running or resetting (a child says idle just after its client's exit code)."""
    end = time.monotonic() + limit
    while True:
        now = agent.status()
        if not now["running"] and not now["resetting"] or time.monotonic() > end:
            return now
        time.sleep(0.05)


def logins(lab, machine: str) -> int:
    """Logins the lab machine's own sshd accepted so far (it logs each one: sshd -e)."""
    out = docker("logs", f"{lab.name}-{machine}").stderr + docker("logs", f"{lab.name}-{machine}").stdout
    return out.count("Accepted publickey")


def counted(lab, machine: str, *args, env=None) -> tuple[subprocess.CompletedProcess, int]:
    before = logins(lab, machine)
    res = sx(*args, env=env)
    return res, logins(lab, machine) - before


def own_inventory(lab, tmp_path, **defaults) -> tuple:
    data = yaml.safe_load(lab.inventory_path.read_text())
    kh = tmp_path / "known_hosts"
    kh.write_text(lab.known_hosts_path.read_text())
    data["defaults"].update({"identity_file": str(lab.key_path), "known_hosts": str(kh), **defaults})
    inv = tmp_path / "inv.yaml"
    inv.write_text(yaml.safe_dump(data))
    return inv, kh, data


def echo_runbook(lab, tmp_path, text="ran", pool="linux"):
    return write_runbook(tmp_path / f"rb-{pool}.yaml", {"name": "warm", "steps": [step("s", lab.image_ref("busybox"), f"echo {text}", syntax="sh", pool=pool)]})


def test_a_second_command_reuses_the_connection(lab_env, tmp_path, agent):
    rb = echo_runbook(lab_env, tmp_path)
    first, n1 = counted(lab_env, "w1", "run", rb, "--worker", "w1")
    assert first.returncode == 0 and "ran" in first.stdout, first.stderr
    assert n1 == 1, "the first command logs in"
    (kept,) = settled(agent)["idle_children"]
    second, n2 = counted(lab_env, "w1", "run", rb, "--worker", "w1")
    assert second.returncode == 0 and "ran" in second.stdout, second.stderr
    assert n2 == 0, "the second command rides on the kept connection: w1's sshd saw no login"
    now = settled(agent)
    assert [c["pid"] for c in now["idle_children"]] == [kept["pid"]] and now["served"] == 2
    (held,) = now["held"]
    assert held["name"] == "w1" and held["kind"] == "worker" and held["idle"] >= 0
    text = sx("agent", "status").stderr
    assert "w1" in text and "worker" in text and all(len(line) <= 80 for line in text.splitlines()), text
    # Without the agent, every command logs in: what the count above is measured against.
    _res, n3 = counted(lab_env, "w1", "run", rb, "--worker", "w1", env={**os.environ, "SSHEXEC_AGENT": "0"})
    assert n3 == 1


def test_a_worker_behind_the_bastion_keeps_both_connections(lab_env, tmp_path, agent):
    rb = echo_runbook(lab_env, tmp_path, pool="internal")
    res, _ = counted(lab_env, "bastion", "run", rb, "--worker", "inner1")
    assert res.returncode == 0 and "ran" in res.stdout, res.stderr
    res, at_bastion = counted(lab_env, "bastion", "run", rb, "--worker", "inner1")
    assert res.returncode == 0 and "ran" in res.stdout, res.stderr
    assert at_bastion == 0, "the jump host's connection is kept too"
    kinds = {(h["name"], h["kind"]) for h in settled(agent)["held"]}
    assert kinds == {("bastion", "bastion"), ("inner1", "worker")}, kinds


def test_a_changed_known_hosts_drops_the_kept_connection(lab_env, tmp_path, agent):
    inv, kh, data = own_inventory(lab_env, tmp_path)
    rb = echo_runbook(lab_env, tmp_path)
    first, _ = counted(lab_env, "w1", "run", rb, "--worker", "w1", "--inventory", inv)
    assert first.returncode == 0 and "ran" in first.stdout, first.stderr
    assert settled(agent)["connections"] == 1
    # As `sshexec trust` does when told to accept another key: w1's entry now names that key.
    trusted = kh.read_text()
    w1 = next(w for w in data["workers"] if w["name"] == "w1")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    host = f"[{w1['host']}]:{w1['port']}"
    other = " ".join((tmp_path / "other.pub").read_text().split()[:2])
    kh.write_text("\n".join([*(ln for ln in trusted.splitlines() if not ln.startswith(host + " ")), f"{host} {other}"]) + "\n")
    res = sx("run", rb, "--worker", "w1", "--inventory", inv, "--json")
    assert res.returncode == 3, res.stderr
    (s,) = json.loads(res.stdout)["steps"]
    assert s["error"]["error"] == "ChangedHostKey" and "ran" not in json.dumps(s.get("output", "")), s
    assert settled(agent)["connections"] == 0, "the stale connection was closed, not kept"
    # Trusted again: a new login, since the old connection is gone.
    kh.write_text(trusted)
    again, n = counted(lab_env, "w1", "run", rb, "--worker", "w1", "--inventory", inv)
    assert again.returncode == 0 and n == 1, again.stderr


def test_a_changed_identity_file_drops_the_kept_connection(lab_env, tmp_path, agent):
    key = tmp_path / "id"
    shutil.copy(lab_env.key_path, key)
    os.chmod(key, 0o600)
    inv, _kh, _data = own_inventory(lab_env, tmp_path, identity_file=str(key))
    rb = echo_runbook(lab_env, tmp_path)
    for expected in (1, 0):
        res, n = counted(lab_env, "w1", "run", rb, "--worker", "w1", "--inventory", inv)
        assert res.returncode == 0 and n == expected, (n, res.stderr)
    # The same key written again (a rotation to the same bytes still changes the file): another login.
    key.write_bytes(key.read_bytes())
    st = key.stat()
    os.utime(key, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    res, n = counted(lab_env, "w1", "run", rb, "--worker", "w1", "--inventory", inv)
    assert res.returncode == 0 and n == 1, (n, res.stderr)
    assert settled(agent)["connections"] == 1, "the connection made with the old file was dropped, not kept beside"


def test_the_idle_child_keeps_no_secret_of_the_command(lab_env, tmp_path, agent):
    token = "client-" + secrets.token_hex(12)
    script = f'if [ "$API_TOKEN" = "{token}" ]; then echo got-the-clients; fi'
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "sec", "sensitive_variables": {"API_TOKEN": {"env": "API_TOKEN"}},
                                              "steps": [step("s", lab_env.image_ref("busybox"), script, syntax="sh")]})  # fmt: skip
    env = {**os.environ, "API_TOKEN": token}
    pids = set()
    for _ in range(2):
        res = sx("run", rb, "--worker", "w1", env=env)
        assert res.returncode == 0 and "got-the-clients" in res.stdout, res.stderr
        (idle,) = settled(agent)["idle_children"]
        pids.add(idle["pid"])
    assert len(pids) == 1, "the second command ran in the kept child"
    (pid,) = pids
    with open(f"/proc/{pid}/environ", "rb") as fh:
        assert token.encode() not in fh.read()
    assert not agent_memory_holds(pid, token.encode()), "the idle child's memory holds the client's secret"
    # A value the child holds live (its environment after the reset is the agent's): the scan finds what is there.
    assert agent_memory_holds(pid, str(agent.run_dir).encode())


def test_kill_9_of_the_client_cancels_and_its_child_is_not_reused(lab_env, tmp_path, agent):
    from sshexec.store.history import History

    warm = echo_runbook(lab_env, tmp_path)
    assert sx("run", warm, "--worker", "w1").returncode == 0
    (kept,) = settled(agent)["idle_children"]
    rb = write_runbook(tmp_path / "long.yaml", {"name": "k9", "steps": [step("long", lab_env.image_ref("busybox"), "echo started; sleep 300", syntax="sh")]})
    proc = subprocess.Popen([sys.executable, "-m", "sshexec", "run", str(rb), "--worker", "w1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    wait_for_line(proc, "| started")
    (child,) = agent.status()["running"]
    assert child["pid"] == kept["pid"], "the kept child runs it"
    run = History().runs(1)[0]
    t0 = time.monotonic()
    proc.kill()
    proc.wait(timeout=10)
    assert wait_gone(child["pid"], 60), "the child ended: a cancelled command's child is not reused"
    print(f"client kill -9 to the kept child's end: {time.monotonic() - t0:.2f}s")
    run = History().runs(1)[0]
    assert run.status == "cancelled", run
    assert leftovers(lab_env, [run.id]) == []
    assert settled(agent)["idle_children"] == []
    proc.stdout.close()
    proc.stderr.close()


def test_two_commands_at_once_do_not_interfere(lab_env, tmp_path, agent):
    rbs = [write_runbook(tmp_path / f"rb{i}.yaml", {"name": f"two{i}", "steps": [step("s", lab_env.image_ref("busybox"), f"sleep 1; echo from-{i}", syntax="sh")]})
           for i in (1, 2)]  # fmt: skip
    for rb in rbs:
        assert sx("run", rb, "--worker", "w1").returncode == 0  # warm
    results: dict[int, subprocess.CompletedProcess] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, sx("run", rbs[i - 1], "--worker", "w1"))) for i in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for i in (1, 2):
        assert results[i].returncode == 0, results[i].stderr
        assert f"from-{i}" in results[i].stdout and f"from-{3 - i}" not in results[i].stdout
    now = settled(agent)
    assert len(now["idle_children"]) == 2 and now["connections"] == 2, "two children, a connection each: one lent to one command at a time"
    assert all(alive(c["pid"]) for c in now["idle_children"])


def test_a_connection_the_worker_closed_is_replaced_before_the_command_uses_it(lab_env, tmp_path, agent):
    rb = echo_runbook(lab_env, tmp_path)
    assert sx("run", rb, "--worker", "w1").returncode == 0
    assert settled(agent)["connections"] == 1
    # The worker's side of the kept connection ends (as when its sshd restarts): its per-connection sshd processes.
    ps = docker("exec", f"{lab_env.name}-w1", "ps", "-eo", "pid,args").stdout.splitlines()
    sessions = [line.split()[0] for line in ps if "sshd: deploy" in line]
    assert sessions, ps
    docker("exec", f"{lab_env.name}-w1", "kill", *sessions)
    res, n = counted(lab_env, "w1", "run", rb, "--worker", "w1")
    assert res.returncode == 0 and "ran" in res.stdout, res.stderr
    assert n == 1, "a new login in place of the dead connection"
