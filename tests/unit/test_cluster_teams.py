"""Where the cluster (issue 20) meets teams (issue 21), on SQLite: a waiting run of a lost node waits again on
another node, a node leaves its waiting runs alone, the metrics' queue depth and runs per node, and the audit
entries of drain/undrain and schedule add/remove (API and command line). PostgreSQL: tests/integration/test_cluster.py."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text

from sshexec.store import cluster, queue
from sshexec.store.approvals import AlreadyDecided, ApprovalStore
from sshexec.store.audit import AuditLog
from sshexec.store.history import History


@pytest.fixture
def h(tmp_path):
    return History(tmp_path)


def _started(h, node: str, runbook: str) -> str:
    rid = queue.submit(h.db, runbook, by="alice")
    (c,) = queue.claim(h.db, node, 1)
    h.start_run(rid, runbook, runbook_path="/x", inventory="/i", variables={}, claim=c.key)
    return rid


def _lose(h, node: str) -> None:
    with h.db.write() as conn:
        conn.execute(text("UPDATE nodes SET last_seen = last_seen - 100 WHERE name = :n"), {"n": node})


def test_a_run_waiting_for_approval_on_a_lost_node_waits_again_on_another_unless_a_worker_ran_a_step(h):
    for name in ("n1", "n2"):
        cluster.register(h.db, name, host="h", pid=1, url=None, task_cap=2, version="t")
    approvals = ApprovalStore(h.db)
    fresh = _started(h, "n1", "gate")  # its first step is the approval: nothing ran anywhere
    approvals.ask(fresh, 0, "ok", message="go?", role="operator", timeout=600)
    built = _started(h, "n1", "gate")  # a step ran on w1 before the approval
    h.start_step(built, 0, "build", "w1")
    h.finish_step(built, "build", "w1", status="succeeded", exit_code=0, message=None, outputs={})
    approvals.ask(built, 1, "ok", message="go?", role="operator", timeout=600)
    assert h.run(fresh).status == "waiting" and h.run(built).status == "waiting"
    _lose(h, "n1")
    lost = {x.run_id: x for x in cluster.sweep_lost(h.db, 30, by="n2", requeue_of=lambda runbook: False)}
    assert set(lost) == {fresh, built}  # neither stays "waiting" on a node that is gone
    again = lost[fresh].requeued_as
    assert again and lost[fresh].waiting and lost[built].requeued_as is None and not lost[built].waiting
    old = h.run(fresh)
    assert old.status == "interrupted" and f"requeued as run {again} (it was waiting for an approval" in old.message
    assert h.run(again).status == "queued" and h.run(again).retry_of == fresh
    assert h.run(built).status == "interrupted" and "requeued" not in h.run(built).message  # on_node_loss: interrupt
    # Nobody decides on the lost run any more: its retry asks again, on the node that claims it.
    assert approvals.get(fresh, "ok").decision == "interrupted"
    with pytest.raises(AlreadyDecided):
        approvals.decide(fresh, "approved", by="bob")
    (claim,) = queue.claim(h.db, "n2", 5)
    assert claim.run_id == again and claim.retry_of == fresh


class _Runs:
    """What Node needs of ServerRuns: its active runs, and cancel_here (recorded)."""

    def __init__(self, active):
        self.active = active
        self.cancelled: list[tuple[str, str]] = []

    def active_ids(self):
        return list(self.active)

    def cancel_here(self, run_id, who, *, fenced=False):
        self.cancelled.append((run_id, who))
        return True


def test_a_node_leaves_its_run_waiting_for_approval_alone_and_cancels_it_once_it_ended_elsewhere(h):
    from sshexec.server.node import Node

    cluster.register(h.db, "n1", host="h", pid=1, url=None, task_cap=2, version="t")
    rid = _started(h, "n1", "gate")
    ApprovalStore(h.db).ask(rid, 0, "ok", message="go?", role="operator", timeout=600)
    runs = _Runs([rid])
    node = Node(runs, h.db, name="n1")
    node._watch()
    assert runs.cancelled == []  # waiting is still this node's run
    with h.db.write() as conn:
        conn.execute(text("UPDATE runs SET status = 'interrupted' WHERE id = :r"), {"r": rid})
    node._watch()
    assert [r for r, _ in runs.cancelled] == [rid]


def test_metrics_queue_depth_and_running_runs_per_node(h):
    from sshexec.server.metrics import exposition, registry_for

    for name in ("n1", "n2"):
        cluster.register(h.db, name, host="h", pid=1, url=None, task_cap=2, version="t")
    _started(h, "n1", "a")
    _started(h, "n1", "a")
    queue.submit(h.db, "a", by="alice")
    queue.submit(h.db, "a", by="alice")
    queue.submit(h.db, "a", by="alice")
    h.start_run("cli1", "a", runbook_path="/x", inventory="/i", variables={})  # a command line's run: its host
    body = exposition(registry_for(h.db))[0].decode()
    import socket

    assert "sshexec_queue_depth 3.0" in body
    assert 'sshexec_runs_running{node="n1"} 2.0' in body and 'sshexec_runs_running{node="n2"} 0.0' in body
    assert f'sshexec_runs_running{{node="{socket.gethostname()}"}} 1.0' in body


def _actions(db) -> list[tuple[str, str, str, str]]:
    return [(e.action, e.target, e.who, e.source) for e in AuditLog(db).entries()]


def test_drain_undrain_and_schedules_are_audited_through_the_api(tmp_path):
    from fastapi.testclient import TestClient

    from sshexec.server.app import create_app
    from sshexec.server.runs import Settings
    from sshexec.store.tokens import TokenStore

    (tmp_path / "rb").mkdir()
    (tmp_path / "rb" / "demo.yaml").write_text("name: demo\nvariables: {WHO: x}\nsteps: [{name: s, pool: linux, container: {image: x}, script: {syntax: sh, inline: 'true'}}]\n")
    inv = tmp_path / "inv.yaml"
    inv.write_text("workers:\n  - name: w1\n    host: 127.0.0.1\n    pools: [linux]\n")
    app = create_app(Settings(runbooks=tmp_path / "rb", inventory=str(inv), node="solo", task_cap=2), db=tmp_path, notify=False)
    admin = TokenStore(app.state.history.db).create("root", "admin")
    with TestClient(app) as c:
        c.headers["Authorization"] = f"Bearer {admin}"
        assert c.post("/api/nodes/solo/drain").status_code == 200
        assert c.post("/api/nodes/solo/undrain").status_code == 200
        assert c.post("/api/nodes/nobody/drain").status_code == 404  # nothing done, nothing recorded
        assert c.post("/api/schedules", json={"name": "nightly", "cron": "0 3 * * *", "runbook": "demo", "vars": {"WHO": "y"}}).status_code == 201
        assert c.delete("/api/schedules/nightly").status_code == 200
        assert c.delete("/api/schedules/nightly").status_code == 404
        time.sleep(0)  # the TestClient's requests are done: the entries are written
    got = [e for e in AuditLog(app.state.history.db).entries() if e.action != "token.create"]
    assert [(e.action, e.target) for e in got] == [("node.drain", "solo"), ("node.undrain", "solo"), ("schedule.add", "nightly"), ("schedule.remove", "nightly")]
    assert all(e.who == "token:root" and e.source.startswith("http ") for e in got)
    assert got[2].detail == {"cron": "0 3 * * *", "runbook": "demo", "vars": ["WHO"]}  # names, never values


def test_drain_undrain_schedules_and_submit_are_audited_from_the_command_line(tmp_path, capsys):
    import getpass

    from sshexec.cli import program

    h = History(tmp_path)
    cluster.register(h.db, "n1", host="h", pid=1, url=None, task_cap=2, version="t")
    db = ["--db", f"sqlite:///{tmp_path}/history.db"]

    def sx(*argv) -> int:
        code = program.run(["sshexec", *argv, *db], exit=False)
        capsys.readouterr()
        return code

    assert sx("nodes", "drain", "n1") in (0, None) and sx("nodes", "undrain", "n1") in (0, None)
    assert sx("nodes", "drain", "nobody") == 2
    assert sx("schedule", "add", "nightly", "--cron", "0 3 * * *", "--runbook", "demo", "--var", "WHO=y") in (0, None)
    assert sx("schedule", "remove", "nightly") in (0, None)
    assert sx("submit", "demo", "--var", "WHO=secret-value") in (0, None)
    got = [e for e in AuditLog(h.db).entries()]
    assert [(e.action, e.target) for e in got[:4]] == [("node.drain", "n1"), ("node.undrain", "n1"), ("schedule.add", "nightly"), ("schedule.remove", "nightly")]
    (trigger,) = got[4:]
    assert trigger.action == "run.trigger" and h.run(trigger.target).status == "queued" and trigger.detail["vars"] == ["WHO"]
    assert all(e.who == getpass.getuser() and e.source.startswith("cli ") for e in got)
    assert "secret-value" not in repr(got)


def test_runs_the_cluster_ends_outside_a_runner_are_notified(h):
    """A queued run cancelled, a claimed run that could not start, a lost node's run: each queues its event
    (store/notify.py) as a run that ended in a Runner does."""
    from sshexec.store.notify import NotifyStore, check_endpoint

    notify = NotifyStore(h.db)
    notify.save(check_endpoint("hook", "http://127.0.0.1:9/hook", ["run.failed", "run.cancelled"], "s" * 16))
    for name in ("n1", "n2"):
        cluster.register(h.db, name, host="h", pid=1, url=None, task_cap=2, version="t")
    unwanted = queue.submit(h.db, "demo", by="alice")
    assert queue.cancel_queued(h.db, unwanted, "bob")
    broken = queue.submit(h.db, "nope", by="alice")
    (claim,) = queue.claim(h.db, "n1", 1)
    queue.fail_claimed(h.db, claim, "could not start on node n1: no runbook named 'nope'", status="error", exit_code=2)
    lost = _started(h, "n1", "demo")
    _lose(h, "n1")
    assert [x.run_id for x in cluster.sweep_lost(h.db, 30, by="n2")] == [lost]
    events = {d["run_id"]: d["event"] for d in notify.log()}
    assert events == {unwanted: "run.cancelled", broken: "run.failed", lost: "run.failed"}
