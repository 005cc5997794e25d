"""Upgrades: a $SSHEXEC_HOME of sshexec before its database (tests/fixtures/legacy-home, made by that version's
own code) is upgraded in place and keeps every run, step, log, artifact and token; an older history.db too;
PostgreSQL is upgraded only by `sshexec db upgrade`, and a database of a newer sshexec is refused."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from labkit import REPO
from sqlalchemy import text

from sshexec.errors import DatabaseError
from sshexec.store import artifacts as stored
from sshexec.store.db import Database
from sshexec.store.history import History
from sshexec.store.migrate import head, upgrade
from sshexec.store.schema import REVISION
from sshexec.store.tokens import TokenStore

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "legacy-home"
MANIFEST = json.loads((FIXTURE / "manifest.json").read_text())


def sx(*args, env=None):
    return subprocess.run([sys.executable, "-m", "sshexec", *args], capture_output=True, text=True, cwd=REPO, timeout=120, env={**os.environ, **(env or {})})


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_the_schema_revision_is_the_last_migration():
    assert head() == REVISION


def test_a_home_of_sshexec_before_the_database_is_upgraded_in_place(tmp_path, monkeypatch):
    home = tmp_path / "home"
    shutil.copytree(FIXTURE, home)
    monkeypatch.setenv("SSHEXEC_HOME", str(home))
    monkeypatch.delenv("SSHEXEC_DB", raising=False)
    # Any command upgrades the default SQLite history at once: here, `sshexec runs`.
    res = sx("runs", "--json", "--limit", "100")
    assert res.returncode == 0, res.stderr
    listed = {r["id"]: r for r in json.loads(res.stdout)}
    assert sorted(listed) == sorted(r["id"] for r in MANIFEST["runs"])
    h = History(home)
    assert h.db.revision() == REVISION
    for run in MANIFEST["runs"]:
        rec = h.run(run["id"])
        assert (rec.runbook, rec.started, rec.finished, rec.exit_code, rec.started_by, rec.runbook_hash, rec.retry_of) == (
            run["runbook"], run["started"], run["finished"], run["exit_code"], run["started_by"], run["runbook_hash"], run["retry_of"])  # fmt: skip
        assert rec.variables == json.loads(run["variables"])
        # The run of a machine that is gone stays "running" in the table, shown as such (not on this host).
        assert rec.status == run["status"]
        log = MANIFEST["logs"][run["id"]]
        assert (len(h.log_text(run["id"])), sha(h.log_text(run["id"]))) == (log["size"], log["sha256"])
    steps = [[r["id"], s["seq"], s["step"], s["worker"], s["status"], s["exit_code"], json.dumps(s["outputs"]), s["attempt"], s["attempts"], s["carried_from"]]
             for r in MANIFEST["runs"] for s in h.steps(r["id"])]  # fmt: skip
    assert sorted(steps, key=str) == sorted(MANIFEST["steps"], key=str)
    for a in MANIFEST["artifacts"]:
        found = stored.artifact(h.db, a["run_id"], a["worker"], a["name"])
        assert (found["step"], found["size"]) == (a["step"], a["size"])
        assert sha(b"".join(stored.chunks(h.db, a["run_id"], a["worker"], a["name"], found["chunks"]))) == a["sha256"]
    # Revision 0003 gave runs the process identity and the cancel request: none is known for these runs,
    # so the server signals none of them (server/runs.py).
    assert {h.run(r["id"]).pid_start for r in MANIFEST["runs"]} == {None}
    assert {h.cancelled_by(r["id"]) for r in MANIFEST["runs"]} == {None}
    tokens = TokenStore(home)
    assert [(t.name, t.role, t.created) for t in tokens.list()] == [(t["name"], t["role"], t["created"]) for t in MANIFEST["tokens"]]
    assert tokens.verify(MANIFEST["a_token"]).name == "alice"
    # The log of the old run reads back through the command line too, and an artifact comes out whole.
    res = sx("logs", "20231114-231320-bbbbb2")
    assert res.returncode == 0 and "w1/deploy | deployed" in res.stdout and "sshexec artifact 20231114-231320-bbbbb2 w2/report.txt" in res.stdout
    out = tmp_path / "image.bin"
    res = sx("artifact", "20231114-221320", "w1/image.bin", "--output", str(out))
    assert res.returncode == 0, res.stderr
    assert sha(out.read_bytes()) == next(a["sha256"] for a in MANIFEST["artifacts"] if a["name"] == "image.bin")
    # The old files are left as they were; nothing reads them any more.
    assert (home / "tokens.json").read_bytes() == (FIXTURE / "tokens.json").read_bytes()
    # A second upgrade has nothing to do.
    res = sx("db", "upgrade")
    assert res.returncode == 0 and f"already at revision {REVISION}" in res.stderr


def test_an_older_history_db_gets_its_missing_columns_and_attempts(tmp_path):
    db = sqlite3.connect(tmp_path / "history.db")
    db.executescript(
        "CREATE TABLE runs (id TEXT PRIMARY KEY, runbook TEXT NOT NULL, runbook_path TEXT, inventory TEXT, started REAL NOT NULL,"
        " finished REAL, status TEXT NOT NULL, exit_code INTEGER, message TEXT, pid INTEGER, host TEXT, variables TEXT);"
        "CREATE TABLE steps (run_id TEXT NOT NULL, seq INTEGER NOT NULL, step TEXT NOT NULL, worker TEXT NOT NULL, status TEXT NOT NULL,"
        " exit_code INTEGER, started REAL, finished REAL, message TEXT, outputs TEXT, PRIMARY KEY (run_id, step, worker));"
        "CREATE TABLE artifacts (run_id TEXT NOT NULL, step TEXT NOT NULL, worker TEXT NOT NULL, name TEXT NOT NULL, path TEXT NOT NULL, size INTEGER NOT NULL);"
        "INSERT INTO runs (id, runbook, started, status, exit_code) VALUES ('old', 'rb', 1.0, 'succeeded', 0);"
        "INSERT INTO steps VALUES ('old', 0, 's', 'w1', 'succeeded', 0, 1.0, 2.0, NULL, '{\"k\": \"v\"}');"
        "INSERT INTO artifacts VALUES ('old', 's', 'w1', 'gone.txt', '/nowhere/gone.txt', 3);"
    )
    db.commit()
    db.close()
    h = History(tmp_path)
    (old,) = h.runs()
    assert old.id == "old" and old.started_by is None
    assert [(s["step"], s["attempt"], s["outputs"]) for s in h.steps("old")] == [("s", 1, {"k": "v"})]
    # Its file was gone: the row is kept, without its bytes.
    assert h.artifacts("old") == [{"step": "s", "worker": "w1", "name": "gone.txt", "size": 3, "stored": False}]
    h.start_run("new", "rb", runbook_path="p", inventory="i", variables={})
    assert h.run("new").started_by


# The history.db of the sshexec just before the database (the lead's main at 1d11d5f): it added pid_start
# itself, and kept who cancelled a run from the server in runs/<id>/cancel.
SCHEMA_BEFORE_THE_DATABASE = """
CREATE TABLE runs (id TEXT PRIMARY KEY, runbook TEXT NOT NULL, runbook_path TEXT, inventory TEXT, started REAL NOT NULL, finished REAL,
    status TEXT NOT NULL, exit_code INTEGER, message TEXT, pid INTEGER, host TEXT, variables TEXT, started_by TEXT, runbook_hash TEXT,
    retry_of TEXT, options TEXT, pid_start TEXT);
CREATE TABLE steps (run_id TEXT NOT NULL REFERENCES runs(id), seq INTEGER NOT NULL, step TEXT NOT NULL, worker TEXT NOT NULL,
    status TEXT NOT NULL, exit_code INTEGER, started REAL, finished REAL, message TEXT, outputs TEXT, attempt INTEGER NOT NULL DEFAULT 1,
    attempts INTEGER NOT NULL DEFAULT 1, carried_from TEXT, PRIMARY KEY (run_id, step, worker, attempt));
CREATE TABLE artifacts (run_id TEXT NOT NULL REFERENCES runs(id), step TEXT NOT NULL, worker TEXT NOT NULL, name TEXT NOT NULL,
    path TEXT NOT NULL, size INTEGER NOT NULL);
CREATE INDEX runs_started ON runs(started);
"""


def test_a_history_db_with_pid_start_keeps_it(tmp_path):
    """pid_start's values survive the upgrade, and still tell the run's process from a later one with its PID."""
    import socket

    from sshexec.core.local import process_identity

    db = sqlite3.connect(tmp_path / "history.db")
    db.executescript(SCHEMA_BEFORE_THE_DATABASE)
    row = "INSERT INTO runs (id, runbook, started, status, pid, host, pid_start) VALUES (?, 'rb', ?, 'running', ?, ?, ?)"
    db.execute(row, ("mine", 2.0, os.getpid(), socket.gethostname(), process_identity(os.getpid())))
    db.execute(row, ("reused", 1.0, os.getpid(), socket.gethostname(), "0/0"))  # its process is gone; this one got the PID
    db.commit()
    db.close()
    (tmp_path / "runs" / "mine").mkdir(parents=True)
    (tmp_path / "runs" / "mine" / "output.log").write_bytes(b"w1/s | hello\n")
    (tmp_path / "runs" / "mine" / "cancel").write_text("token:root through sshexec serve on h (pid 1)\n")
    h = History(tmp_path)
    assert h.db.revision() == REVISION
    assert [(r.id, r.status, r.pid_start) for r in h.runs()] == [("mine", "running", process_identity(os.getpid())), ("reused", "interrupted", "0/0")]
    assert h.log_text("mine") == b"w1/s | hello\n"
    # A cancel file was read only by the run's own process while it ran (its words are in the run's message): not copied.
    assert h.cancelled_by("mine") is None
    h.ask_cancel("mine", "token:root")
    assert h.cancelled_by("mine") == "token:root"


@pytest.fixture
def empty_pg(request, postgres, monkeypatch):
    import uuid

    name = "m_" + uuid.uuid4().hex[:12]
    url = postgres.create_database(name)
    request.addfinalizer(lambda: postgres.drop_database(name))
    monkeypatch.setenv("PGPASSWORD", postgres.password)
    monkeypatch.setenv("SSHEXEC_DB", url)
    return url


def test_postgresql_is_upgraded_only_by_db_upgrade(empty_pg):
    res = sx("runs")
    assert res.returncode == 3 and "has no sshexec tables yet" in res.stderr and f"sshexec db upgrade --db {empty_pg}" in res.stderr
    # A database at an older revision: a command says to upgrade it, and changes nothing.
    db = Database(empty_pg)
    upgrade(db, "0001")
    res = sx("token", "list")
    assert res.returncode == 3 and f"is at schema revision 0001, and this sshexec needs {REVISION}" in res.stderr
    assert db.revision() == "0001"
    res = sx("db", "status", "--json")
    assert json.loads(res.stdout) == {"url": empty_pg, "revision": "0001", "wanted": REVISION, "state": "needs sshexec db upgrade"}
    # Two upgrades at once take turns (an advisory lock): both succeed, the schema is made once.
    procs = [subprocess.Popen([sys.executable, "-m", "sshexec", "db", "upgrade", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO) for _ in range(2)]
    outs = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert sorted((o["before"], o["after"]) for o in outs) == [("0001", REVISION), (REVISION, REVISION)]
    assert sx("runs", "--json").stdout.strip() == "[]"


def test_a_database_of_a_newer_sshexec_is_refused(db_url):
    db = Database(db_url)
    with db.write() as c:
        c.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    res = sx("runs")
    assert res.returncode == 3 and "at schema revision 9999, which a newer sshexec made" in res.stderr and "upgrade sshexec" in res.stderr
    res = sx("db", "upgrade")
    assert res.returncode == 3 and "9999" in res.stderr
    with pytest.raises(DatabaseError, match="newer sshexec"):
        History(db_url)


@pytest.fixture(params=["sqlite", "postgresql"])
def bare_url(request, tmp_path, monkeypatch):
    """An empty database of each engine, not upgraded."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'bare' / 'history.db'}"
    return request.getfixturevalue("empty_pg")


def _upgraded(url: str) -> dict:
    res = sx("db", "upgrade", "--db", url, "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def _cluster_and_teams_work(url: str) -> None:
    """The tables of 0004 (the cluster) and 0005 (teams, chained after it) are there and take writes."""
    from sshexec.store import queue
    from sshexec.store.approvals import ApprovalStore
    from sshexec.store.audit import AuditLog

    db = Database(url)
    rid = queue.submit(db, "demo", {"A": "1"}, by="alice")
    AuditLog(db).record("run.trigger", who="alice", source="test", target=rid, detail={"queued": True})
    (claim,) = queue.claim(db, "n1", 1)
    h = History(url)
    h.start_run(rid, "demo", runbook_path="/x", inventory="/i", variables={}, claim=claim.key)
    ApprovalStore(db).ask(rid, 0, "ok", message="go?", role="operator", timeout=60)
    assert h.run(rid).status == "waiting" and [e.target for e in AuditLog(db).entries()] == [rid]
    with db.read() as c:
        assert c.execute(text("SELECT count(*) FROM steps WHERE image_digest IS NULL AND run_id = :r"), {"r": rid}).scalar() == 1


def test_an_empty_database_upgrades_to_the_cluster_and_teams(bare_url):
    if bare_url.startswith("sqlite"):
        Path(bare_url.removeprefix("sqlite:///")).parent.mkdir(parents=True)
    out = _upgraded(bare_url)
    assert out["after"] == REVISION == "0005" and head() == "0005"
    _cluster_and_teams_work(bare_url)


def test_a_0003_database_upgrades_through_0004_then_0005_keeping_its_runs(bare_url):
    """0005_teams was written on top of 0003; it now follows 0004_cluster: a database of main (0003) goes through both."""
    if bare_url.startswith("sqlite"):
        Path(bare_url.removeprefix("sqlite:///")).parent.mkdir(parents=True)
    db = Database(bare_url)
    upgrade(db, "0003")
    assert db.revision() == "0003"
    with db.write() as c:
        c.execute(text("INSERT INTO runs (id, runbook, started, status, exit_code) VALUES ('old1', 'demo', 1.0, 'succeeded', 0)"))
    db.close()
    out = _upgraded(bare_url)
    assert (out["before"], out["after"]) == ("0003", "0005")
    h = History(bare_url)
    assert h.run("old1").status == "succeeded" and h.run("old1").node is None
    _cluster_and_teams_work(bare_url)
