"""A real sshd with tight limits: MaxStartups 2 and MaxSessions 2, many inventory entries on it, and long silence.

Thirty inventory entries name one worker's sshd (same host and port, a
work_root each), so every fan-out opens thirty SSH connections to it at
once: sshexec must stay within MaxStartups (sshd drops the connections past
it before the banner) and MaxSessions (sshd refuses channels past it), and no
run or check may fail or print an error for it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from labkit import REPO, docker, extra_worker, inventory_file, leftovers, sshexec, step, write_runbook

pytestmark = pytest.mark.usefixtures("no_leftovers")

ENTRIES = 30


def sshd_settings(container_id: str) -> dict[str, str]:
    """The settings the worker's sshd really runs with (`sshd -T`)."""
    out = docker("exec", container_id, "/usr/sbin/sshd", "-T").stdout
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def sshd_log(xw) -> str:
    logs = docker("logs", xw.id)
    return logs.stdout + logs.stderr


@pytest.fixture(scope="module")
def tight(lab):
    with extra_worker(lab, env={"SSHEXEC_SSHD_CONFIG": "MaxStartups 2\nMaxSessions 2"}) as xw:
        cfg = sshd_settings(xw.id)
        assert (cfg["maxstartups"], cfg["maxsessions"]) == ("2:30:2", "2"), cfg
        yield xw


def sshexec_while_saturated(xw, *args, env) -> tuple[subprocess.CompletedProcess, str]:
    """Run `sshexec ARGS` while two idle connections hold the sshd at MaxStartups, until it has
    dropped one of sshexec's: then let go. What sshexec did, and what sshd logged meanwhile."""
    before = sshd_log(xw)
    idle = [socket.create_connection(("127.0.0.1", xw.port), timeout=10) for _ in range(2)]
    try:
        for s in idle:
            assert s.recv(64).startswith(b"SSH-")  # accepted: an unauthenticated connection, as sshd counts them
        proc = subprocess.Popen([sys.executable, "-m", "sshexec", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
        end = time.monotonic() + 60
        while "past MaxStartups" not in sshd_log(xw)[len(before) :]:
            assert proc.poll() is None and time.monotonic() < end, "sshd never dropped a connection of sshexec's"
            time.sleep(0.05)
    finally:
        for s in idle:
            s.close()
    out, err = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), sshd_log(xw)[len(before) :]


def many_entries(tmp_path, lab, xw):
    # connect_timeout 20: thirty handshakes queue up at one sshd that is made to drop some, on a busy machine.
    workers = [{"name": f"e{i:02d}", "host": "127.0.0.1", "port": xw.port, "pools": ["tight"], "work_root": str(xw.work / f"e{i:02d}"), "connect_timeout": 20} for i in range(ENTRIES)]
    inv = inventory_file(tmp_path, lab, workers, known_hosts=xw.host_keys())
    return {**os.environ, "SSHEXEC_INVENTORY": str(inv)}


def test_check_parallel_50_on_one_tight_sshd(lab_env, tmp_path, tight):
    env = many_entries(tmp_path, lab_env, tight)
    res, log = sshexec_while_saturated(tight, "check", "--parallel", "50", "--json", env=env)
    data = json.loads(res.stdout)
    assert len(data["workers"]) == ENTRIES and all(w["healthy"] for w in data["workers"]), [w["error"] for w in data["workers"] if not w["healthy"]]
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip() == ""  # no warning, no error line
    assert log.count("past MaxStartups") >= 1  # dropped, asked again: the retry path ran
    assert log.count("Accepted publickey") >= ENTRIES


def test_target_each_fan_out_on_one_tight_sshd(lab_env, tmp_path, tight):
    env = many_entries(tmp_path, lab_env, tight)
    image = lab_env.image_ref("busybox")
    steps = [step(f"s{n}", image, f'echo "step {n} on $SSHEXEC_WORKER"; set_sshexec_variable N {n}', syntax="sh", pool="tight", target="each") for n in range(1, 4)]
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "tight", "steps": steps})
    res, log = sshexec_while_saturated(tight, "run", rb, "--json", "--parallel", str(ENTRIES), env=env)
    data = json.loads(res.stdout)
    failed = [(s["step"], s["worker"], s["status"], s["message"]) for s in data["steps"] if s["status"] != "succeeded"]
    assert res.returncode == 0, (data["message"], failed, res.stderr[-2000:])
    results = [(s["step"], s["worker"], s["status"]) for s in data["steps"]]
    assert len(results) == 3 * ENTRIES and {r[2] for r in results} == {"succeeded"}, [r for r in results if r[2] != "succeeded"]
    for n in range(1, 4):
        for i in range(ENTRIES):
            assert f"e{i:02d}/s{n} | step {n} on e{i:02d}" in res.stderr
    # --json sends the live output to stderr: nothing else may be there.
    assert [line for line in res.stderr.splitlines() if " | " not in line] == []
    assert leftovers(lab_env, [data["run_id"]]) == []
    assert not any((tight.work / f"e{i:02d}" / "runs" / data["run_id"]).exists() for i in range(ENTRIES))
    assert log.count("past MaxStartups") >= 1  # dropped, asked again: the retry path ran


def test_channels_past_max_sessions_wait_for_a_free_one(lab_env, tmp_path, tight):
    """Six commands at once on one connection: sshd refuses channels past 2 ("no more sessions"), none fails."""
    import threading

    from sshexec.config.inventory import load_inventory
    from sshexec.ssh import Connection

    inv = load_inventory(inventory_file(tmp_path, lab_env, [{"name": "x", "host": "127.0.0.1", "port": tight.port}], known_hosts=tight.host_keys()))
    before = sshd_log(tight)
    results = {}
    with Connection(inv.worker("x"), retries=1) as conn:

        def one(i):
            results[i] = conn.run(f"sleep 1; echo {i}", timeout=60)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert conn.gate.limit == 2  # what sshd accepted at once, learned from its refusals
    assert {i: (r.exit_code, r.stdout) for i, r in results.items()} == {i: (0, f"{i}\n".encode()) for i in range(6)}
    assert "no more sessions" in sshd_log(tight)[len(before) :]  # the limit was really reached


# A step silent for SILENCE seconds succeeds: neither sshexec's idle probe nor the transport's keepalive
# ends it. The probe comes after SSHEXEC_IDLE_PROBE seconds of silence (1 s here, so the silence holds
# about SILENCE probes, more than the 90 s this test once waited held at the default 5 s), and paramiko's
# keepalive (every 15 s) fires inside it too. Its worker allows ONE session per connection, held by the
# step all along, so a probe that took a session (instead of a global request) would be refused and
# the step would fail as a lost connection. (sshd may still log a refusal around the step: a channel
# opened right after another closed, before sshd saw the close; sshexec waits and asks again.)
# The default of 5 s is tested in tests/unit/test_idle_probe.py.
SILENCE = 20


def test_a_long_silent_step_succeeds(lab_env, tmp_path):
    with extra_worker(lab_env, env={"SSHEXEC_SSHD_CONFIG": "MaxSessions 1"}) as xw:
        assert sshd_settings(xw.id)["maxsessions"] == "1"
        inv = inventory_file(tmp_path, lab_env, [{"name": xw.name, "host": "127.0.0.1", "port": xw.port, "pools": ["quiet"], "work_root": str(xw.work)}], known_hosts=xw.host_keys())
        rb = write_runbook(tmp_path / "rb.yaml", {"name": "quiet", "steps": [step("quiet", lab_env.image_ref("busybox"), f"sleep {SILENCE}; echo woke up", syntax="sh", pool="quiet", timeout=300)]})
        env = {**os.environ, "SSHEXEC_INVENTORY": str(inv), "SSHEXEC_IDLE_PROBE": "1"}
        res = sshexec("run", rb, "--json", env=env, timeout=600)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr
        (s,) = json.loads(res.stdout)["steps"]
        assert s["status"] == "succeeded" and s["duration"] >= SILENCE
        assert f"{xw.name}/quiet | woke up" in res.stderr
