"""One history for the command line and the server, on SQLite and on PostgreSQL: several processes and
threads write at once and nothing is lost; runs, steps, logs and artifacts read back; prune removes old runs whole."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from unittest import mock

import pytest
from labkit import REPO
from sqlalchemy import func, select

from sshexec.store import artifacts as stored
from sshexec.store.artifacts import CHUNK, RunArtifacts, TooBig
from sshexec.store.history import History, new_run_id
from sshexec.store.prune import prune
from sshexec.store.schema import artifact_chunks, artifacts, log_chunks, runs, steps

WRITER = """
import sys
from sshexec.store.history import History
url, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
h = History(url)
for i in range(n):
    rid = f"{tag}-{i:03d}"
    h.start_run(rid, "rb", runbook_path="rb.yaml", inventory="inv.yaml", variables={"I": str(i)})
    h.start_step(rid, 0, "s", "w1")
    with h.log_writer(rid) as log:
        log.write(f"w1/s | {rid}\\n".encode())
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


def test_cli_processes_and_server_threads_write_at_once(db_url):
    n = 30
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, db_url, f"cli{p}", str(n)], cwd=REPO, stderr=subprocess.PIPE, text=True) for p in range(4)]
    server = History(db_url)  # the server's one instance, shared by its run threads
    threads = [threading.Thread(target=write_runs, args=(server, f"srv{t}", n)) for t in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in procs:
        assert p.wait(120) == 0, p.stderr.read()
    h = History(db_url)
    records = h.runs(10_000)
    assert len(records) == h.count() == 7 * n
    assert {r.status for r in records} == {"succeeded"}
    assert h.count(status="succeeded", runbook="rb") == 7 * n
    for r in records:
        (step,) = h.steps(r.id)
        assert step["outputs"] == {"k": r.id}
        if r.id.startswith("cli"):
            assert h.log_text(r.id) == f"w1/s | {r.id}\n".encode()
        else:
            assert r.started_by == "token:t"


def test_paging_and_filters(db_url):
    h = History(db_url)
    write_runs(h, "a", 5)
    h.start_run("b-000", "other", runbook_path="o.yaml", inventory="i", variables={})
    ids = [r.id for r in h.runs(100)]
    assert [r.id for r in h.runs(2, offset=1)] == ids[1:3]
    assert [r.id for r in h.runs(100, runbook="other")] == ["b-000"]
    assert h.count(status="running") == 1 and h.count(runbook="rb") == 5
    assert h.find("a-00") == [f"a-{i:03d}" for i in reversed(range(5))]
    assert h.find("a_") == [] and h.find("%") == []  # LIKE's wildcards are plain characters in a prefix


def test_runs_steps_attempts_and_artifacts_read_back(db_url):
    h = History(db_url)
    rid = new_run_id()
    h.start_run(rid, "rb", runbook_path="/rb.yaml", inventory="/inv.yaml", variables={"A": "1"})
    assert h.run(rid).status == "running"
    h.start_step(rid, 0, "s", "w1", attempts=2)
    h.finish_step(rid, "s", "w1", status="error", exit_code=None, message="lost", outputs={})
    h.start_step(rid, 0, "s", "w1", attempt=2, attempts=2)
    h.finish_step(rid, "s", "w1", status="succeeded", exit_code=0, message=None, outputs={"X": "1"}, attempt=2)
    h.note_step(rid, 1, "t", "w2", status="skipped", message="not run", outputs={})
    body = bytes(range(256)) * (CHUNK // 256 * 2 + 7)  # two whole chunks and a piece
    with RunArtifacts(h.db, rid).writer("s", "w1", "a.bin") as fh:
        for i in range(0, len(body), 32768):
            fh.write(body[i : i + 32768])
    h.finish_run(rid, "succeeded", 0, None)
    rec = h.run(rid)
    assert (rec.status, rec.exit_code, rec.variables) == ("succeeded", 0, {"A": "1"})
    assert [(s["step"], s["attempt"], s["status"], s["outputs"]) for s in h.steps(rid)] == [("s", 1, "error", {}), ("s", 2, "succeeded", {"X": "1"}), ("t", 1, "skipped", {})]
    assert h.artifacts(rid) == [{"step": "s", "worker": "w1", "name": "a.bin", "size": len(body), "stored": True}]
    found = stored.artifact(h.db, rid, "w1", "a.bin")
    pieces = list(stored.chunks(h.db, rid, "w1", "a.bin", found["chunks"]))
    assert b"".join(pieces) == body and max(map(len, pieces)) == CHUNK and len(pieces) == 3  # streamed a chunk at a time


def test_an_artifact_past_the_cap_leaves_nothing(db_url):
    h = History(db_url)
    h.start_run("r1", "rb", runbook_path="", inventory="", variables={})
    store = RunArtifacts(h.db, "r1", limit=CHUNK + 10)
    with pytest.raises(TooBig), store.writer("s", "w1", "big") as fh:
        for _ in range(3):
            fh.write(b"x" * (CHUNK // 2 + 1))
    assert h.artifacts("r1") == [] and not store.has("w1", "big")
    with h.db.read() as c:
        assert c.execute(select(func.count()).select_from(artifact_chunks)).scalar_one() == 0
    assert "more than the cap of 1.0 MiB: not stored" in store.too_big("big", 5 << 20)


def test_a_run_whose_process_died_shows_as_interrupted(db_url):
    code = "import sys; from sshexec.store.history import History; History(sys.argv[1]).start_run('r-dead', 'rb', runbook_path='', inventory='', variables={})"
    subprocess.run([sys.executable, "-c", code, db_url], check=True, cwd=REPO)
    assert History(db_url).run("r-dead").status == "interrupted"


def test_a_run_is_its_process_not_its_pid(db_url):
    """pid_start says which process the PID was: a later process with the same PID is not the run's."""
    from sqlalchemy import update

    from sshexec.core.local import process_identity

    h = History(db_url)
    h.start_run("r-pid", "rb", runbook_path="", inventory="", variables={})
    rec = h.run("r-pid")
    assert (rec.pid, rec.pid_start, rec.status) == (os.getpid(), process_identity(os.getpid()), "running")
    with h.db.write() as c:  # the run's process is gone and this one got its PID: another start time
        c.execute(update(runs).where(runs.c.id == "r-pid").values(pid_start="0/0"))
    assert h.run("r-pid").status == "interrupted"
    assert [r.id for r in h.runs(10, status="interrupted")] == ["r-pid"] and h.runs(10, status="running") == []


def test_who_asked_a_run_to_stop_is_in_the_database(db_url):
    """The server writes who cancels a command-line run before it signals its process, which reads it
    (a process on another machine that shares the database too)."""
    h = History(db_url)
    h.start_run("r-ask", "rb", runbook_path="", inventory="", variables={})
    assert h.cancelled_by("r-ask") is None and h.cancelled_by("no-such-run") is None
    h.ask_cancel("r-ask", "token:root through sshexec serve on host (pid 1) " + "x" * 300)
    code = "import sys; from sshexec.store.history import History; print(History(sys.argv[1]).cancelled_by('r-ask'))"
    said = subprocess.run([sys.executable, "-c", code, db_url], check=True, cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert said.startswith("token:root through sshexec serve on host (pid 1) xxx") and len(said) == 200


def test_a_status_filter_names_the_valid_statuses(db_url):
    from sshexec.core.status import RUN_STATUSES
    from sshexec.errors import InputError

    h = History(db_url)
    write_runs(h, "s", 2)
    for query in (lambda: h.runs(status="bogus"), lambda: h.count(status="faild")):
        with pytest.raises(InputError, match="a run's status is one of " + ", ".join(RUN_STATUSES)):
            query()
    res = subprocess.run([sys.executable, "-m", "sshexec", "runs", "--status", "faild"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert res.returncode == 2 and "unknown run status 'faild': did you mean 'failed'?" in " ".join(res.stderr.split()), res.stderr
    assert [r.id for r in h.runs(status="succeeded")] == ["s-001", "s-000"]


def _old_run(h: History, rid: str, runbook: str, age_days: float, *, status="succeeded", log=b"w1/s | old\n", art=b"") -> None:
    with mock.patch("time.time", return_value=time.time() - age_days * 86400):
        h.start_run(rid, runbook, runbook_path="", inventory="", variables={})
    h.start_step(rid, 0, "s", "w1")
    with h.log_writer(rid) as w:
        w.write(log)
    if art:
        with RunArtifacts(h.db, rid).writer("s", "w1", "out.bin") as fh:
            fh.write(art)
    if status != "running":
        h.finish_step(rid, "s", "w1", status=status, exit_code=0, message=None, outputs={})
        h.finish_run(rid, status, 0, None)


def _rows(h: History) -> dict[str, set]:
    with h.db.read() as c:
        return {t.name: set(c.execute(select(t.c.run_id if t is not runs else t.c.id)).scalars()) for t in (runs, steps, log_chunks, artifacts, artifact_chunks)}


def test_prune_deletes_old_runs_whole_and_leaves_the_rest(db_url):
    h = History(db_url)
    big = b"y" * (CHUNK * 2 + 5)
    _old_run(h, "old-a1", "a", 40, art=big)
    _old_run(h, "old-a2", "a", 35, log=b"w1/s | z\n" * 20000)
    _old_run(h, "old-a3", "a", 31)
    _old_run(h, "new-a4", "a", 1, art=b"keep me")
    _old_run(h, "old-b1", "b", 50, status="failed")
    _old_run(h, "live-b2", "b", 60, status="running")  # this process is alive: a run still going
    before = _rows(h)
    dry = prune(h, older_than=30, keep=1, dry_run=True)
    # --keep 1: a keeps new-a4, b keeps old-b1 (its newest), and the running one is never a candidate.
    assert sorted(dry.runs) == ["old-a1", "old-a2", "old-a3"] and _rows(h) == before
    out = prune(h, older_than=30, keep=2)
    # a keeps its 2 newest (new-a4, old-a3); b keeps 2 as well: old-b1 and the running one.
    assert sorted(out.runs) == ["old-a1", "old-a2"]
    assert out.artifacts == 1 and out.artifact_bytes == len(big) and out.log_bytes == len(b"w1/s | old\n") + len(b"w1/s | z\n") * 20000
    after = _rows(h)
    for table, ids in after.items():
        assert not ids & {"old-a1", "old-a2"}, table
        assert ids == before[table] - {"old-a1", "old-a2"}, table
    assert h.log_text("new-a4") == b"w1/s | old\n" and h.artifacts("new-a4")[0]["size"] == 7
    out = prune(h, older_than=30)
    assert sorted(out.runs) == ["old-a3", "old-b1"]  # never the run still going
    assert {r.id for r in h.runs(100)} == {"new-a4", "live-b2"}


def test_prune_and_runs_on_the_command_line(db_url):
    h = History(db_url)
    _old_run(h, "old-1", "a", 10)
    _old_run(h, "new-1", "a", 0)
    sx = lambda *a: subprocess.run([sys.executable, "-m", "sshexec", *a], capture_output=True, text=True, cwd=REPO, timeout=120)  # noqa: E731
    res = sx("history", "prune", "--older-than", "5", "--dry-run", "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["runs"] == ["old-1"], res.stderr
    assert [r["id"] for r in json.loads(sx("runs", "--json").stdout)] == ["new-1", "old-1"]
    res = sx("history", "prune", "--older-than", "5")
    assert res.returncode == 0 and "deleted 1 runs that started more than 5 days ago" in res.stderr
    assert [r["id"] for r in json.loads(sx("runs", "--json").stdout)] == ["new-1"]
    res = sx("history", "prune")
    assert res.returncode == 2 and "--older-than DAYS is missing" in res.stderr
    res = sx("history", "prune", "--older-than", "soon")
    assert res.returncode == 2 and "--older-than must be a number of days" in res.stderr
