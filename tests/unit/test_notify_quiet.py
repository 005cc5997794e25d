"""A run's way out when no notification endpoint wants anything: no write transaction at all (store/notify.py).

Shown with SQLite's write lock held by another connection the whole time: queueing an event nobody wants, and
looking for what is due when nothing is, return at once instead of waiting for the lock (here: 0.3 s, then an error).
"""

from __future__ import annotations

import logging
import sqlite3

import pytest

from sshexec.store import db as dbmod
from sshexec.store.history import History
from sshexec.store.notify import NotifyStore, announce, check_endpoint


@pytest.fixture
def locked(tmp_path, monkeypatch):
    monkeypatch.setattr(dbmod, "BUSY_TIMEOUT_MS", 300)
    h = History(tmp_path)
    h.start_run("r1", "demo", runbook_path="/x", inventory="/i", variables={})
    other = sqlite3.connect(h.db.path, isolation_level=None, timeout=0.3)
    other.execute("BEGIN IMMEDIATE")  # another process's write, held
    yield h
    other.execute("ROLLBACK")
    other.close()


def test_nothing_wanted_nothing_written(locked, caplog):
    caplog.set_level(logging.WARNING, logger="sshexec")
    assert announce(locked.db, "r1", "failed") is False, "nothing queued: `sshexec run` starts no sender at its end"
    assert not [r for r in caplog.records if "could not be queued" in r.getMessage()], "announce took the write lock"
    assert NotifyStore(locked.db).claim(run_id="r1") == []
    assert not NotifyStore(locked.db).wants("run.failed")


def test_an_endpoint_that_wants_it_still_gets_it(tmp_path):
    h = History(tmp_path)
    h.start_run("r1", "demo", runbook_path="/x", inventory="/i", variables={})
    store = NotifyStore(h.db)
    store.save(check_endpoint("hook", "http://127.0.0.1:9/hook", ["run.failed"], "s" * 16))
    assert store.wants("run.failed") and not store.wants("run.succeeded")
    assert announce(h.db, "r1", "succeeded") is False
    assert announce(h.db, "r1", "failed") is True, "queued: `sshexec run` tries it at once (cli/runs.py)"
    assert [d["event"] for d in store.log()] == ["run.failed"]
    (due,) = store.claim(run_id="r1")
    assert due.event == "run.failed" and due.endpoint.name == "hook"
