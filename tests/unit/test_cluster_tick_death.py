"""A schedule's tick fires exactly once across the nodes even when the node firing it dies mid-tick.

On the session's real PostgreSQL: node n1 has written the tick's run and its (schedule, tick) row, its
transaction still open, when its backend is killed (pg_terminate_backend: what PostgreSQL does to a node
whose connection dropped); node n2, which asked for the same tick meanwhile and waits on n1's row, then
fires it: one run, one tick row (n2's), nothing of n1's left, and no node fires that tick again.
"""

from __future__ import annotations

import threading
import uuid

import pytest
from sqlalchemy import text

from sshexec.errors import DatabaseError
from sshexec.store import schedules
from sshexec.store.db import Database

pytestmark = pytest.mark.postgres


def _one(admin: Database, sql: str, **params):
    with admin.read() as c:
        return c.execute(text(sql), params).scalar()


def test_a_tick_fires_exactly_once_when_its_node_dies_in_the_middle(request, postgres, monkeypatch):
    name = "t_tick_" + uuid.uuid4().hex[:10]
    url = postgres.create_database(name)
    request.addfinalizer(lambda: postgres.drop_database(name))
    monkeypatch.setenv("PGPASSWORD", postgres.password)
    Database(url).upgrade()  # its engine goes with the database's drop (WITH FORCE)
    n1, n2, admin = Database(url), Database(url), Database(url)
    request.addfinalizer(lambda: [d.close() for d in (n1, n2, admin)])  # before the drop (finalizers run last first)
    s = schedules.add(admin, "often", "* * * * * */10", "demo", {"A": "1"}, by="alice")
    now = (int(s.created) // 10 + 1) * 10 + 0.5  # just past the next tick
    tick = (int(now) // 10) * 10

    real_update = schedules.update
    second: dict = {}
    n2_done = threading.Event()
    seen = {"n1_pid": None, "n2_blocked": False}

    def n2_fires() -> None:
        try:
            second["fired"] = schedules.fire_due(n2, "n2", now)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertions below
            second["error"] = exc
        finally:
            n2_done.set()

    def dying_update(table):
        """The test's hook, between n1's tick row and its commit: n2 asks for the tick, then n1's backend dies."""
        if seen["n1_pid"] is None:
            seen["n1_pid"] = _one(admin, "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND state = 'idle in transaction'")
            assert seen["n1_pid"], "n1's transaction is not open at the hook"
            threading.Thread(target=n2_fires, daemon=True).start()
            while not n2_done.wait(0.05):  # n2 waits on n1's (schedule, tick) row, unless the code lets it through
                waiting = _one(admin, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'")
                if waiting:
                    seen["n2_blocked"] = True
                    break
            assert _one(admin, "SELECT pg_terminate_backend(:p)", p=seen["n1_pid"]) is True
        return real_update(table)

    monkeypatch.setattr(schedules, "update", dying_update)
    with pytest.raises(DatabaseError):
        schedules.fire_due(n1, "n1", now)
    assert n2_done.wait(60), "n2 never finished firing the tick"
    assert "error" not in second, second.get("error")
    assert seen["n2_blocked"], "n2 did not wait on the tick n1 was firing"

    (fired,) = second["fired"]
    assert fired[:2] == ("often", tick)
    assert schedules.ticks(admin, "often") == [(tick, fired[2], "n2")]
    runs = _one(admin, "SELECT string_agg(id, ',') FROM runs WHERE started_by = 'schedule:often'")
    assert runs == fired[2], f"runs of the schedule: {runs}"
    assert _one(admin, "SELECT count(*) FROM queue WHERE submitted_by = 'schedule:often'") == 1
    assert schedules.list_schedules(admin)[0].last_tick == tick
    for node, db in (("n1", n1), ("n2", n2), ("n3", admin)):  # n1's engine reconnects: it is back, and fires nothing
        assert schedules.fire_due(db, node, now + 1) == []
    assert len(schedules.ticks(admin, "often")) == 1
