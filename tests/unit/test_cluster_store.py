"""The cluster's data layer on SQLite (no daemon): the queue's FIFO claims, fencing by the claim's epoch, lost
nodes, schedules' ticks, the maintenance lease; and the node's /health, Nodes and Schedules pages."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text

from sshexec.store import cluster, queue, schedules
from sshexec.store.history import Fenced, History


@pytest.fixture
def h(tmp_path):
    return History(tmp_path)


def test_claims_are_fifo_each_run_once_and_at_most_n(h):
    ids = [queue.submit(h.db, "demo", {"N": str(i)}, by="alice") for i in range(5)]
    assert h.run(ids[0]).status == "queued"
    first = queue.claim(h.db, "n1", 2)
    second = queue.claim(h.db, "n2", 10)
    assert [c.run_id for c in first] == ids[:2] and [c.run_id for c in second] == ids[2:]
    assert queue.claim(h.db, "n3", 10) == [] and not queue.waiting(h.db)
    assert first[0].variables == {"N": "0"} and first[0].epoch == 1 and h.run(ids[0]).node == "n1"


def test_a_run_is_written_only_under_its_claim(h):
    rid = queue.submit(h.db, "demo", by="alice")
    (c,) = queue.claim(h.db, "n1", 1)
    with pytest.raises(Fenced):
        h.start_run(rid, "demo", runbook_path="/x", inventory="/i", variables={}, claim=("n1", c.epoch + 1))
    h.start_run(rid, "demo", runbook_path="/x", inventory="/i", variables={}, claim=c.key)
    assert h.run(rid).status == "running"
    with h.db.write() as conn:  # another node found n1 lost
        conn.execute(text("UPDATE runs SET status = 'interrupted', message = 'node n1 lost' WHERE id = :r"), {"r": rid})
    assert h.finish_run(rid, "succeeded", 0, None, claim=c.key) is False
    assert h.run(rid).status == "interrupted"


def test_a_queued_run_cancels_at_once_and_a_claimed_one_does_not(h):
    a, b = queue.submit(h.db, "demo", by="x"), queue.submit(h.db, "demo", by="x")
    queue.claim(h.db, "n1", 1)
    assert queue.cancel_queued(h.db, a, "bob") is False
    assert queue.cancel_queued(h.db, b, "bob") is True
    assert h.run(b).status == "cancelled" and "bob" in h.run(b).message


def test_a_silent_node_is_lost_once_its_runs_interrupted_or_requeued(h):
    for name in ("n1", "n2"):
        cluster.register(h.db, name, host="h", pid=1, url=None, task_cap=2, version="t")
    plain, again = queue.submit(h.db, "plain", by="alice"), queue.submit(h.db, "again", by="alice")
    for c in queue.claim(h.db, "n1", 2):
        h.start_run(c.run_id, c.runbook, runbook_path="/x", inventory="/i", variables={}, claim=c.key)
    waiting = queue.submit(h.db, "plain", by="alice")
    queue.claim(h.db, "n1", 1)  # claimed, not started: goes back to the queue
    with h.db.write() as conn:
        conn.execute(text("UPDATE nodes SET last_seen = last_seen - 100 WHERE name = 'n1'"))
    lost = cluster.sweep_lost(h.db, 30, by="n2", requeue_of=lambda runbook: runbook == "again")
    assert cluster.sweep_lost(h.db, 30, by="n3") == []  # once
    assert {(x.run_id, x.node, bool(x.requeued_as)) for x in lost} == {(plain, "n1", False), (again, "n1", True)}
    rec = h.run(plain)
    assert rec.status == "interrupted" and "node n1 stopped checking in" in rec.message and "found by node n2" in rec.message
    new = next(x.requeued_as for x in lost if x.run_id == again)
    assert h.run(new).status == "queued" and h.run(new).retry_of == again and f"requeued as run {new}" in h.run(again).message
    assert {c.run_id for c in queue.claim(h.db, "n2", 5)} == {waiting, new}
    assert {n.name: n.state for n in cluster.list_nodes(h.db)} == {"n1": "lost", "n2": "up"}
    assert cluster.check_in(h.db, "n1") == (False, True)  # back: told it was lost, and up again


def test_a_tick_fires_once_whichever_nodes_ask_and_missed_ticks_are_not_made_up(h):
    s = schedules.add(h.db, "often", "* * * * * */10", "demo", {"A": "1"}, by="alice")
    t = s.created
    tick = (int(t) // 10 + 1) * 10 + 0.5  # just past the next tick
    assert schedules.fire_due(h.db, "n1", tick) and schedules.fire_due(h.db, "n2", tick) == []
    later = tick + 35  # three ticks later: only the newest fires
    fired = schedules.fire_due(h.db, "n2", later)
    assert [f[1] for f in fired] == [(int(later) // 10) * 10]
    assert len(schedules.ticks(h.db, "often")) == 2
    assert {c.runbook for c in queue.claim(h.db, "n1", 5)} == {"demo"}
    with pytest.raises(Exception, match="already"):
        schedules.add(h.db, "often", "* * * * *", "demo")
    with pytest.raises(Exception, match="not a cron expression"):
        schedules.add(h.db, "bad", "61 * * * *", "demo")


def test_the_maintenance_lease_has_one_holder_and_passes_on_when_it_expires(h):
    assert cluster.hold_lease(h.db, "maintenance", "n1", 0.3)
    assert not cluster.hold_lease(h.db, "maintenance", "n2", 0.3)
    assert cluster.hold_lease(h.db, "maintenance", "n1", 0.3)
    time.sleep(0.4)
    assert cluster.hold_lease(h.db, "maintenance", "n2", 0.3) and not cluster.hold_lease(h.db, "maintenance", "n1", 0.3)


def test_health_drain_and_the_cluster_pages(tmp_path):
    from fastapi.testclient import TestClient

    from sshexec.server.app import create_app
    from sshexec.server.runs import Settings
    from sshexec.store.tokens import TokenStore

    (tmp_path / "rb").mkdir()
    (tmp_path / "rb" / "demo.yaml").write_text("name: demo\nsteps: [{name: s, pool: linux, container: {image: x}, script: {syntax: sh, inline: 'true'}}]\n")
    inv = tmp_path / "inv.yaml"
    inv.write_text("workers:\n  - name: w1\n    host: 127.0.0.1\n    pools: [linux]\n")
    app = create_app(Settings(runbooks=tmp_path / "rb", inventory=str(inv), node="solo", task_cap=2), db=tmp_path)
    admin = TokenStore(app.state.history.db).create("root", "admin")
    with TestClient(app) as c:
        c.headers["Authorization"] = f"Bearer {admin}"
        assert c.get("/health").json() == {"node": "solo", "state": "up"}
        assert c.get("/health").headers["x-sshexec-node"] == "solo"
        assert [n["name"] for n in c.get("/api/nodes").json()] == ["solo"]
        assert c.post("/api/nodes/solo/drain").status_code == 200
        for _ in range(50):
            if c.get("/health").status_code == 503:
                break
            time.sleep(0.1)
        assert c.get("/health").status_code == 503 and c.get("/health").json()["state"] == "draining"
        assert c.post("/api/nodes/nobody/drain").status_code == 404
        r = c.post("/api/schedules", json={"name": "nightly", "cron": "0 3 * * *", "runbook": "demo"})
        assert r.status_code == 201, r.text
        assert c.post("/api/schedules", json={"name": "x", "cron": "0 3 * * *", "runbook": "nope"}).status_code == 404
        assert "nightly" in c.get("/schedules").text and "solo" in c.get("/nodes").text
        assert c.delete("/api/schedules/nightly").status_code == 200 and c.get("/api/schedules").json() == []


def test_submit_and_run_queue_from_the_command_line(tmp_path, monkeypatch, capsys):
    from sshexec.cli import program

    monkeypatch.setenv("SSHEXEC_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SSHEXEC_DB", raising=False)
    rb = tmp_path / "deploy.yaml"
    rb.write_text("name: deploy\nvariables: {V: a}\nsteps: [{name: s, pool: linux, container: {image: x}, script: {syntax: sh, inline: 'true'}}]\n")
    assert program.run(["sshexec", "submit", str(rb), "--var", "V=b"], exit=False) == 0
    run_id = capsys.readouterr().out.strip()
    assert program.run(["sshexec", "run", "--queue", "deploy", "--json"], exit=False) == 0
    assert '"status": "queued"' in capsys.readouterr().out
    assert program.run(["sshexec", "submit", str(rb), "--var", "NOPE=1"], exit=False) == 2  # checked against the file
    assert program.run(["sshexec", "run", "--queue", str(rb), "--worker", "w1"], exit=False) == 2
    claims = queue.claim(History(tmp_path / "home").db, "n1", 5)
    assert [(c.run_id, c.runbook, c.variables) for c in claims][0] == (run_id, "deploy", {"V": "b"}) and len(claims) == 2


class FakeRuns:
    """What server/node.py asks of ServerRuns, with nothing to run."""

    def __init__(self, history):
        self.history = history
        self.started: list = []

    def active_ids(self):
        return list(self.started)  # they never end

    def start_claimed(self, claim):
        self.started.append(claim.run_id)

    def cancel_here(self, run_id, who, fenced=False):
        return False

    def requeue_on_loss(self, runbook):
        return False


def test_a_node_claims_checks_in_and_registers_again_if_its_row_went(h):
    from sshexec.server.node import Node

    runs = FakeRuns(h)
    node = Node(runs, h.db, name="solo", task_cap=2, stale=2.0).start()
    try:
        ids = [queue.submit(h.db, "demo", by="x") for _ in range(3)]
        node.wake.set()
        deadline = time.monotonic() + 10
        while len(runs.started) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.2)  # two more rounds of its loop: still at its cap
        assert runs.started == ids[:2] and queue.depth(h.db) == 1  # FIFO, up to its task cap
        with h.db.write() as conn:
            conn.execute(text("DELETE FROM nodes"))
        deadline = time.monotonic() + 10
        while cluster.node(h.db, "solo") is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cluster.node(h.db, "solo").state == "up"
        assert cluster.hold_lease(h.db, "maintenance", "other", 1) is False  # it holds the maintenance lease
    finally:
        node.stop()
    assert cluster.node(h.db, "solo").state == "stopped"


def test_the_workers_are_checked_once_per_cluster_by_the_maintenance_node(h):
    from sshexec.server.node import Node
    from sshexec.server.workers import HealthCache
    from sshexec.views import HealthReport

    class Checks(HealthCache):
        def __init__(self, name):
            super().__init__(None, 1, db=h.db)
            self.name, self.count = name, 0

        def _check(self) -> HealthReport:
            self.count += 1
            return HealthReport(healthy=True, workers=[], checked_at=time.time())

    caches = {n: Checks(n) for n in ("a", "b")}
    nodes = [Node(FakeRuns(h), h.db, name=n, stale=2.0, health=caches[n], health_every=0.5).start() for n in ("a", "b")]
    try:
        deadline = time.monotonic() + 10
        while sum(c.count for c in caches.values()) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        for node in nodes:
            node.stop()
    holder = [n for n, c in caches.items() if c.count]
    assert len(holder) == 1 and caches[holder[0]].count >= 3  # one node checks, on its schedule
    other = caches[({"a", "b"} - set(holder)).pop()]
    assert other.report().checked_at == cluster.get_setting(h.db, "workers_health")["checked_at"] and other.count == 0  # the other answers with it
