"""One history for the command line and the server: several processes and threads write at once, nothing is lost."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading

from labkit import REPO

from sshexec.store.history import History

WRITER = """
import sys
from pathlib import Path
from sshexec.store.history import History
home, tag, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
h = History(home)
for i in range(n):
    rid = f"{tag}-{i:03d}"
    h.start_run(rid, "rb", runbook_path="rb.yaml", inventory="inv.yaml", variables={"I": str(i)})
    h.start_step(rid, 0, "s", "w1")
    with open(h.log_path(rid), "ab") as fh:
        fh.write(f"w1/s | {rid}\\n".encode())
    h.finish_step(rid, "s", "w1", status="succeeded", exit_code=0, message=None, outputs={"k": rid})
    h.finish_run(rid, "succeeded", 0, None)
"""


def write_runs(h: History, tag: str, n: int) -> None:
    for i in range(n):
        rid = f"{tag}-{i:03d}"
        h.start_run(rid, "rb", runbook_path="rb.yaml", inventory="inv.yaml", variables={"I": str(i)}, started_by="token:t")
        h.start_step(rid, 0, "s", "w1")
        h.finish_step(rid, "s", "w1", status="succeeded", exit_code=0, message=None, outputs={"k": rid})
        h.finish_run(rid, "succeeded", 0, None)


def test_cli_processes_and_server_threads_write_at_once(tmp_path):
    n = 30
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), f"cli{p}", str(n)], cwd=REPO, stderr=subprocess.PIPE, text=True)
        for p in range(4)
    ]
    server = History(tmp_path)  # the server's one instance, shared by its run threads
    threads = [threading.Thread(target=write_runs, args=(server, f"srv{t}", n)) for t in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in procs:
        assert p.wait(120) == 0, p.stderr.read()
    h = History(tmp_path)
    runs = h.runs(10_000)
    assert len(runs) == h.count() == 7 * n
    assert {r.status for r in runs} == {"succeeded"}
    assert h.count(status="succeeded", runbook="rb") == 7 * n
    for r in runs:
        (step,) = h.steps(r.id)
        assert step["outputs"] == {"k": r.id}
        if r.id.startswith("cli"):
            assert h.log_path(r.id).read_text() == f"w1/s | {r.id}\n"
        else:
            assert r.started_by == "token:t"
    assert sqlite3.connect(h.path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_paging_and_filters(tmp_path):
    h = History(tmp_path)
    write_runs(h, "a", 5)
    h.start_run("b-000", "other", runbook_path="o.yaml", inventory="i", variables={})
    ids = [r.id for r in h.runs(100)]
    assert [r.id for r in h.runs(2, offset=1)] == ids[1:3]
    assert [r.id for r in h.runs(100, runbook="other")] == ["b-000"]
    assert h.count(status="running") == 1 and h.count(runbook="rb") == 5


def test_an_older_history_gets_the_started_by_column(tmp_path):
    db = sqlite3.connect(tmp_path / "history.db")
    db.executescript(
        "CREATE TABLE runs (id TEXT PRIMARY KEY, runbook TEXT NOT NULL, runbook_path TEXT, inventory TEXT, started REAL NOT NULL,"
        " finished REAL, status TEXT NOT NULL, exit_code INTEGER, message TEXT, pid INTEGER, host TEXT, variables TEXT);"
        "INSERT INTO runs (id, runbook, started, status, exit_code) VALUES ('old', 'rb', 1.0, 'succeeded', 0);"
    )
    db.commit()
    db.close()
    h = History(tmp_path)
    (old,) = h.runs()
    assert old.id == "old" and old.started_by is None
    h.start_run("new", "rb", runbook_path="p", inventory="i", variables={})
    assert h.run("new").started_by
