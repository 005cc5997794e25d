"""Approval steps (issue 21), on the lab, on SQLite and PostgreSQL: approved from the API (a viewer gets 403), rejected
from the CLI (exit 1, `if: failure` runs), timed out; no container and no slot while a run waits; who and the
comment in the run's record and log, and in the audit trail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from labkit import REPO, leftovers, sshexec, step, write_runbook
from serverkit import busybox, follow_log, running_server

from sshexec.store.history import History


def gated(lab, *, timeout: str = "10m", name: str = "gated") -> dict:
    """build, then a person's approval, then deploy; rollback only if something failed."""
    return {
        "name": name,
        "steps": [
            step("build", busybox(lab), "echo built", syntax="sh", feed="lab"),
            {"name": "gate", "approval": {"message": "Deploy build to production?", "role": "operator", "timeout": timeout}},
            step("deploy", busybox(lab), 'echo "deploying, approved by $(get_sshexec_variable gate.decided_by)"', syntax="sh", feed="lab"),
            {**step("rollback", busybox(lab), "echo rolling back", syntax="sh", feed="lab"), "if": "failure"},
        ],
    }


def wait_waiting(run_id: str, limit: float = 120) -> None:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        rec = History().run(run_id)
        if rec is not None and rec.status == "waiting":
            return
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} never waited")


def nothing_held(lab, run_id: str, env) -> None:
    """While a run waits: no container of it on any worker's daemon, no slot and no step lock on any worker."""
    assert [x for x in leftovers(lab, [run_id]) if x.startswith("container")] == []
    held = json.loads(sshexec("locks", "--json", env=env).stdout)
    assert all(w.get("slots", []) == [] and w.get("locks", []) == [] for w in held["workers"]), held


def statuses(run_id: str) -> dict[str, str]:
    return {s["step"]: s["status"] for s in History().steps(run_id)}


def test_approved_from_the_api_rejected_from_the_cli_and_timed_out(lab_env, db_url, tmp_path):
    env = {**os.environ}
    books = tmp_path / "runbooks"
    books.mkdir()
    write_runbook(books / "gated.yaml", gated(lab_env))
    home = Path(os.environ["SSHEXEC_HOME"])

    # 1. From the API: a viewer may not decide; an operator approves with a comment; a second decision is too late.
    with running_server(runbooks=books, inventory=lab_env.inventory_path, home=home) as srv:
        op, viewer = srv.token("op", "operator"), srv.token("viewer", "viewer")
        with srv.client(op) as c:
            run_id = c.post("/api/runs", json={"runbook": "gated", "vars": {}}).json()["run_id"]
            wait_waiting(run_id)
            nothing_held(lab_env, run_id, env)
            assert c.get(f"/api/runs/{run_id}").json()["status"] == "waiting"
            asked = c.get(f"/api/runs/{run_id}/approval").json()
            assert (asked["step"], asked["message"], asked["role"], asked["decision"]) == ("gate", "Deploy build to production?", "operator", None)
            with srv.client(viewer) as v:
                r = v.post(f"/api/runs/{run_id}/approval", json={"decision": "approve"})
                assert r.status_code == 403 and "needs operator" in r.json()["detail"]
            assert History().run(run_id).status == "waiting"  # the viewer changed nothing
            r = c.post(f"/api/runs/{run_id}/approval", json={"decision": "approve", "comment": "ship it"})
            assert r.status_code == 200, r.text
            assert (r.json()["decision"], r.json()["by"], r.json()["comment"]) == ("approved", "token:op", "ship it")
            assert c.post(f"/api/runs/{run_id}/approval", json={"decision": "reject"}).status_code == 409
            text, end = follow_log(srv, op, run_id)
            assert end == {"status": "succeeded", "exit_code": 0}
            assert "waiting for approval (operator): Deploy build to production?" in text
            assert "approved by token:op: ship it" in text and "deploying, approved by token:op" in text
            detail = c.get(f"/api/runs/{run_id}").json()
            gate = next(s for s in detail["steps"] if s["step"] == "gate")
            assert (gate["worker"], gate["status"], gate["outputs"]) == ("-", "succeeded", {"decision": "approved", "decided_by": "token:op", "comment": "ship it"})
        assert statuses(run_id) == {"build": "succeeded", "gate": "succeeded", "deploy": "succeeded", "rollback": "skipped"}

    # 2. From the command line: a run waits (and says so to a notification endpoint, with no server about);
    # `sshexec approve --reject` fails the step, exit 1; rollback runs.
    got: list[bytes] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            got.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    hook = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    env["HOOK_SECRET"] = "approval-hook-secret"
    res = sshexec("notify", "add", "waits", "--url", f"http://127.0.0.1:{hook.server_address[1]}/", "--events", "run.waiting,run.failed", "--secret-env", "HOOK_SECRET", env=env)
    assert res.returncode == 0, res.stderr
    proc = subprocess.Popen([sys.executable, "-m", "sshexec", "run", str(books / "gated.yaml"), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
    try:
        end = time.monotonic() + 120
        waiting = []
        while not waiting and time.monotonic() < end and proc.poll() is None:
            waiting = json.loads(sshexec("runs", "--json", "--status", "waiting", env=env).stdout)
            time.sleep(0.3)
        assert len(waiting) == 1, proc.stderr.read() if proc.poll() is not None else waiting
        cli_run = waiting[0]["id"]
        nothing_held(lab_env, cli_run, env)
        end = time.monotonic() + 60
        while not got and time.monotonic() < end:
            time.sleep(0.2)
        (body,) = [json.loads(b) for b in got]  # sent while the run still waits: nobody decided yet (and no server runs)
        assert (body["event"], body["run_id"], body["step"], body["message"], body["role"]) == ("run.waiting", cli_run, "gate", "Deploy build to production?", "operator")
        res = sshexec("approve", cli_run[:17], "--reject", "--comment", "not today", env=env)
        assert res.returncode == 0 and "rejected by" in res.stderr, res.stderr
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    hook.shutdown()
    hook.server_close()  # refused at once from now on: the later runs' notifications to it do not wait NOTIFY_WAIT each
    assert proc.returncode == 1, err
    # Its end was queued for the hook and tried by `sshexec run` itself before it exited (no server runs).
    assert [json.loads(b)["event"] for b in got] == ["run.waiting", "run.failed"], got
    result = json.loads(out)
    assert result["run_id"] == cli_run and result["status"] == "failed"
    assert statuses(cli_run) == {"build": "succeeded", "gate": "failed", "deploy": "skipped", "rollback": "succeeded"}
    me = os.environ.get("USER") or os.environ.get("LOGNAME") or "root"
    gate = next(s for s in History().steps(cli_run) if s["step"] == "gate")
    assert gate["message"] == f"rejected by {me}: not today" and gate["exit_code"] == 1
    shown = sshexec("logs", cli_run, env=env).stdout
    assert f"rejected by {me}: not today" in " ".join(shown.split())
    again = sshexec("approve", cli_run, env=env)
    assert again.returncode == 2 and "already decided (rejected by" in again.stderr

    # 3. No decision within the timeout: the step fails, exit 1, rollback runs.
    write_runbook(tmp_path / "quick.yaml", gated(lab_env, timeout="2s", name="quick"))
    res = sshexec("run", tmp_path / "quick.yaml", "--json", env=env)
    assert res.returncode == 1, res.stderr
    quick = json.loads(res.stdout)["run_id"]
    assert statuses(quick) == {"build": "succeeded", "gate": "failed", "deploy": "skipped", "rollback": "succeeded"}
    assert "approval timed out" in next(s for s in History().steps(quick) if s["step"] == "gate")["message"]

    # Every decision is in the audit trail.
    audit = json.loads(sshexec("audit", "--json", env=env).stdout)
    decisions = [(e["action"], e["target"], e["who"]) for e in audit if e["action"] in ("run.approve", "run.reject")]
    assert decisions == [("run.approve", run_id, "token:op"), ("run.reject", cli_run, me)]


def test_a_runbook_mixing_approval_with_a_container_is_refused(tmp_path):
    rb = write_runbook(tmp_path / "bad.yaml", {"name": "bad", "steps": [{"name": "gate", "pool": "linux", "approval": {"message": "ok?"}}]})
    res = sshexec("run", rb, "--dry-run", "--inventory", str(REPO / "inventory" / "workers.example.yaml"))
    assert res.returncode == 2 and "an approval: step runs nothing on a worker: remove pool" in res.stderr


def test_a_run_on_a_terminal_is_approved_at_its_prompt(lab_env, tmp_path):
    """No server, no other command: the run started from a TTY asks, and the answer decides (recorded as the local user)."""
    import pty
    import select

    env = {**os.environ, "COLUMNS": "200"}
    rb = write_runbook(tmp_path / "gated.yaml", gated(lab_env))
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "sshexec", "run", str(rb)], stdin=slave, stdout=slave, stderr=slave, cwd=REPO, env=env, close_fds=True)
    os.close(slave)
    seen = ""
    try:
        end = time.monotonic() + 120
        while "Approve step gate?" not in seen:
            ready, _, _ = select.select([master], [], [], max(0.0, end - time.monotonic()))
            assert ready, f"no prompt; the terminal shows {seen!r}"
            seen += os.read(master, 4096).decode(errors="replace")
        os.write(master, b"y fine by me\n")
        assert proc.wait(timeout=120) == 0, seen
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    run_id = History().runs(1)[0].id
    me = os.environ.get("USER") or os.environ.get("LOGNAME") or "root"
    gate = next(s for s in History().steps(run_id) if s["step"] == "gate")
    assert (gate["status"], gate["message"]) == ("succeeded", f"approved by {me}: fine by me")
    (entry,) = [e for e in json.loads(sshexec("audit", "--json", "--action", "run.approve", env=env).stdout) if e["target"] == run_id]
    assert entry["who"] == me and entry["source"].endswith("(prompt)")
