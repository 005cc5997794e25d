"""Never hang, never leak: timeouts, Ctrl-C, lost connections, retries, concurrency (real faults)."""

import json
import os
import signal
import time

import pytest
import yaml

from labkit import docker, extra_worker, free_port, inventory_file, leftovers, sshexec, start_run, step, wait_for_line, write_runbook

# Both modes: in-process and through the resident agent (tests/conftest.py, both_modes).
pytestmark = pytest.mark.usefixtures("no_leftovers", "both_modes")


def history_run(run_id=None):
    runs = json.loads(sshexec("runs", "--json").stdout)
    return runs[0] if run_id is None else next(r for r in runs if r["id"] == run_id)


def wait_until_clean(lab, run_ids, limit=45):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        left = leftovers(lab, run_ids)
        if not left:
            return
        time.sleep(0.5)
    raise AssertionError(f"still left after {limit}s: {left}")


def test_step_timeout_kills_the_container(lab_env, tmp_path):
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "t", "steps": [step("slow", lab_env.image_ref("busybox"), "echo started; sleep 300", syntax="sh", timeout=3)]})
    res = sshexec("run", rb, "--json", "--worker", "w2")
    data = json.loads(res.stdout)
    assert res.returncode == 124
    (s,) = data["steps"]
    assert s["status"] == "timed-out" and s["exit_code"] == 124 and "timed out after 3s" in s["message"]
    assert history_run(data["run_id"])["status"] == "timed-out"


def test_sigint_cancels_within_seconds_and_cleans_up(lab_env, tmp_path):
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "c", "steps": [
        step("long", lab_env.image_ref("tools"), "echo started; mkdir -p a/b; touch a/b/c; chmod 500 a/b; sleep 300", target="each"),
    ]})  # fmt: skip
    proc = start_run(rb)
    wait_for_line(proc, "| started")
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)  # a hang guard, not a benchmark; the measured time is printed below
    took = time.monotonic() - t0
    print(f"SIGINT to exit: {took:.2f}s")
    assert proc.returncode == 130
    rec = history_run()
    assert rec["status"] == "cancelled" and rec["exit_code"] == 130
    assert leftovers(lab_env, [rec["id"]]) == []
    hist = json.loads(sshexec("logs", rec["id"], "--json").stdout)
    assert {s["status"] for s in hist["steps"]} == {"cancelled"}


def test_second_sigint_quits_at_once_and_still_records(lab_env, tmp_path):
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "cc", "steps": [step("long", lab_env.image_ref("busybox"), "echo started; sleep 300", syntax="sh")]})
    proc = start_run(rb)
    wait_for_line(proc, "| started")
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    assert proc.returncode == 130
    rec = history_run()
    assert rec["status"] == "cancelled" and rec["finished"]
    # The worker side stops what was left when the SSH session ended.
    wait_until_clean(lab_env, [rec["id"]])


def test_sigterm_is_a_cancel_too(lab_env, tmp_path):
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "term", "steps": [step("long", lab_env.image_ref("busybox"), "echo started; sleep 300", syntax="sh")]})
    proc = start_run(rb)
    wait_for_line(proc, "| started")
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    assert proc.returncode == 130
    assert history_run()["status"] == "cancelled"


def _own_worker_inventory(tmp_path, lab, xw, **more):
    spec = {"name": xw.name, "host": "127.0.0.1", "port": xw.port, "pools": ["solo"], "work_root": str(xw.work), **more}
    return inventory_file(tmp_path, lab, [spec], known_hosts=xw.host_keys())


def _long_step_on(xw, lab, tmp_path, *, worker=None, env=None):
    """`sshexec run --json` of a long step on the extra worker alone, returned once the step runs.
    `worker`: more inventory settings of that worker; `env`: more environment variables."""
    inv = _own_worker_inventory(tmp_path, lab, xw, **(worker or {}))
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "long", "steps": [step("long", lab.image_ref("busybox"), "echo started; sleep 300", syntax="sh", pool="solo")]})
    proc = start_run(rb, "--json", env={**os.environ, "SSHEXEC_INVENTORY": str(inv), **(env or {})})
    # --json sends live output to stderr.
    end = time.monotonic() + 60
    err = b""
    while b"| started" not in err and time.monotonic() < end and proc.poll() is None:
        err += proc.stderr.readline()
    assert b"| started" in err, err
    return proc


def test_paused_worker_is_a_lost_connection_not_a_hang(lab_env, tmp_path):
    with extra_worker(lab_env) as xw:
        # The silent step is probed after 1 s of silence instead of 5 (SSHEXEC_IDLE_PROBE, a knob for tests; the default
        # is pinned in tests/unit/test_idle_probe.py): the same probe, unanswered, finds the connection lost. The run's
        # last sweep then dials the paused worker, which accepts and never sends its banner: connect_timeout 5 s, not 10.
        proc = _long_step_on(xw, lab_env, tmp_path, worker={"connect_timeout": 5}, env={"SSHEXEC_IDLE_PROBE": "1"})
        docker("pause", xw.id)
        try:
            t0 = time.monotonic()
            out, _ = proc.communicate(timeout=90)  # hang guard
            print(f"paused worker detected after {time.monotonic() - t0:.1f}s")
        finally:
            docker("unpause", xw.id)
        data = json.loads(out)
        assert proc.returncode == 3
        (s,) = data["steps"]
        assert s["status"] == "error" and f"connection to {xw.name} lost" in s["message"]
        # Once the worker runs again, nothing of the run stays: sshd sees the session is gone,
        # the container's stdin closes, and the executor stops the step.
        wait_until_clean(lab_env, [data["run_id"]])
        assert docker("ps", "-aq", "--filter", f"label=sshexec.run={data['run_id']}").stdout.strip() == ""


def test_killed_sshd_is_a_lost_connection_and_the_server_cleans_up(lab_env, tmp_path):
    with extra_worker(lab_env) as xw:
        proc = _long_step_on(xw, lab_env, tmp_path)
        # Kill the session's sshd processes (by PID, inside the worker); the listener stays.
        pids = docker("exec", xw.id, "ps", "-eo", "pid=,args=").stdout
        victims = [line.split()[0] for line in pids.splitlines() if "sshd: deploy" in line]
        assert victims
        docker("exec", xw.id, "kill", "-9", *victims)
        out, err = proc.communicate(timeout=60)
        data = json.loads(out)
        assert proc.returncode == 3, (data["steps"], err.decode()[-1000:])
        assert f"connection to {xw.name} lost" in data["steps"][0]["message"]
        assert data["leftovers"] == []
        assert leftovers(lab_env, [data["run_id"]]) == []


def test_unreachable_worker_says_how_many_attempts(lab_env, tmp_path):
    inv = inventory_file(tmp_path, lab_env, [{"name": "gone", "host": "127.0.0.1", "port": free_port(), "pools": ["linux"]}])
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "u", "steps": [step("s", lab_env.image_ref("busybox"), "true", syntax="sh")]})
    env = {**os.environ, "SSHEXEC_INVENTORY": str(inv), "SSHEXEC_CONNECT_RETRIES": "3"}
    res = sshexec("run", rb, env=env)
    assert res.returncode == 3
    assert "gone: cannot reach 127.0.0.1" in res.stdout + res.stderr
    assert "after 3 attempts" in res.stdout
    assert res.stderr.count("retrying") == 2


def test_four_concurrent_runs_on_two_workers(lab_env, tmp_path):
    data = yaml.safe_load(lab_env.inventory_path.read_text())
    data["workers"] = [w for w in data["workers"] if w["name"] in ("w1", "w2")]
    data["defaults"]["identity_file"] = str(lab_env.key_path)
    data["defaults"]["known_hosts"] = str(lab_env.known_hosts_path)
    inv = tmp_path / "two.yaml"
    inv.write_text(yaml.safe_dump(data))
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "busy", "steps": [
        step("fan", lab_env.image_ref("busybox"), "echo $SSHEXEC_RUN_ID on $SSHEXEC_WORKER; touch shared.txt; sleep 1", syntax="sh", target="each", files=str(tmp_path / "payload")),
        step("one", lab_env.image_ref("tools"), "set_sshexec_variable Me $SSHEXEC_RUN_ID", pull="always", feed="lab"),
    ]})  # fmt: skip
    (tmp_path / "payload").mkdir()
    (tmp_path / "payload" / "data.txt").write_text("x" * 10000)
    env = {**os.environ, "SSHEXEC_INVENTORY": str(inv)}
    # No executor on the workers yet: the four runs upload it at the same time.
    from sshexec.executor import executor_hash

    for w in ("w1", "w2"):
        docker("exec", f"{lab_env.name}-{w}", "rm", "-rf", str(lab_env.work_root(w) / "executor"))
    procs = [start_run(rb, "--json", env=env) for _ in range(4)]
    outs = [p.communicate(timeout=180) for p in procs]
    results = [json.loads(o) for o, _ in outs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [e.decode()[-500:] for _, e in outs]
    ids = {r["run_id"] for r in results}
    assert len(ids) == 4
    for r in results:
        assert r["outputs"]["one.Me"] == r["run_id"]
        assert history_run(r["run_id"])["status"] == "succeeded"
    assert leftovers(lab_env, ids) == []
    for w in ("w1", "w2"):  # one intact executor, no half-written copies
        listing = docker("exec", f"{lab_env.name}-{w}", "ls", "-A", str(lab_env.work_root(w) / "executor")).stdout.split()
        assert listing == [executor_hash()]
        # -A: a lost upload race used to leave a .tmp.* directory in there.
        files = docker("exec", f"{lab_env.name}-{w}", "ls", "-A", str(lab_env.work_root(w) / "executor" / executor_hash())).stdout.split()
        assert sorted(files) == ["helpers.sh", "run.sh", "sshexec_helpers.py"]
