"""One history in PostgreSQL for several machines: `sshexec run --db postgresql://…` on the lab from two homes
and two operators, `runs`/`logs`/`artifact` from a third, and a server on the same database following a run
it did not start, live; only masked text in the database; an artifact past the cap is refused, not cut."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest
from labkit import REPO, step, stored_artifact, stored_log, write_runbook
from serverkit import busybox, follow_log, running_server, wait_for
from sqlalchemy import text

from sshexec.store.history import History

SECRET = "s3cret-" + uuid.uuid4().hex[:12]


@pytest.fixture
def pg_url(request, postgres, monkeypatch):
    name = "s_" + uuid.uuid4().hex[:12]
    url = postgres.create_database(name)
    request.addfinalizer(lambda: postgres.drop_database(name))
    monkeypatch.setenv("PGPASSWORD", postgres.password)
    monkeypatch.delenv("SSHEXEC_DB", raising=False)  # every command below names --db itself
    res = subprocess.run([sys.executable, "-m", "sshexec", "db", "upgrade", "--db", url], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert res.returncode == 0, res.stderr
    return url


def sx(*args, home, user="alice", check=True, background=False):
    """`sshexec ARGS` as `user` with a home of its own: another operator on another machine, as far as the history can tell."""
    env = {**os.environ, "SSHEXEC_HOME": str(home), "LOGNAME": user, "USER": user, "SEC_TOKEN": SECRET}
    argv = [sys.executable, "-m", "sshexec", *map(str, args)]
    if background:
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    res = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert not check or res.returncode == 0, res.stderr[-3000:]
    return res


def runbook(tmp_path, lab, name: str, *, lines: int = 3, pause: float = 0.0) -> str:
    script = (
        f'i=1; while [ $i -le {lines} ]; do echo "{name} line $i"; i=$((i+1)); sleep {pause}; done; '
        'echo "token is $TOKEN"; head -c 300000 /dev/zero | tr "\\0" "a" > big.txt; echo "made by $SSHEXEC_WORKER" > note.txt; '
        "new_sshexec_artifact note.txt; new_sshexec_artifact big.txt"
    )
    data = {"name": name, "sensitive_variables": {"TOKEN": {"env": "SEC_TOKEN"}}, "steps": [step("s", busybox(lab), script, syntax="sh", feed="lab")]}
    return str(write_runbook(tmp_path / f"{name}.yaml", data))


def test_runs_of_every_machine_and_operator_in_one_postgresql(lab_env, pg_url, tmp_path):
    a = json.loads(sx("run", runbook(tmp_path, lab_env, "from-a"), "--worker", "w1", "--json", "--db", pg_url, home=tmp_path / "a", user="alice").stdout)
    b = json.loads(sx("run", runbook(tmp_path, lab_env, "from-b"), "--worker", "w2", "--json", "--db", pg_url, home=tmp_path / "b", user="bob").stdout)
    assert not (tmp_path / "a" / "history.db").exists() and not (tmp_path / "b" / "history.db").exists()  # nothing but the URL
    c = tmp_path / "c"
    listed = json.loads(sx("runs", "--json", "--db", pg_url, home=c).stdout)
    assert [(r["id"], r["runbook"], r["started_by"], r["status"]) for r in listed] == [
        (b["run_id"], "from-b", "bob", "succeeded"), (a["run_id"], "from-a", "alice", "succeeded")]  # fmt: skip
    for run, worker in ((a, "w1"), (b, "w2")):
        shown = sx("logs", run["run_id"], "--db", pg_url, home=c).stdout
        assert f"{worker}/s | {run['runbook']} line 3" in shown and f"{worker}/s | token is ********" in shown
        assert f"sshexec artifact --db {pg_url} {run['run_id']} {worker}/big.txt" in shown  # pasted as-is, it reads the same database
        out = tmp_path / f"{worker}-big.txt"
        sx("artifact", run["run_id"], f"{worker}/big.txt", "--output", out, "--db", pg_url, home=c)
        assert out.read_bytes() == b"a" * 300000
        assert sx("artifact", run["run_id"], f"{worker}/note.txt", "--output", "-", "--db", pg_url, home=c).stdout == f"made by {worker}\n"
    # Only masked text reached the database: no table holds the secret, in any column.
    h = History(pg_url)
    with h.db.read() as conn:
        for table in ("runs", "steps", "log_chunks", "artifacts", "artifact_chunks", "tokens", "sessions"):
            dump = conn.execute(text(f"SELECT CAST(t AS text) FROM {table} t")).scalars().all()  # every column, as text (bytea as hex)
            assert all(SECRET not in row and SECRET.encode().hex() not in row for row in dump), table
    assert b"token is ********" in stored_log(a["run_id"], pg_url)


def test_an_artifact_past_the_cap_is_refused_with_a_message(lab_env, pg_url, tmp_path):
    res = sx("run", runbook(tmp_path, lab_env, "capped"), "--worker", "w1", "--json", "--artifact-max", "100K", "--db", pg_url, home=tmp_path / "a", check=False)
    assert res.returncode == 1, res.stderr[-2000:]
    data = json.loads(res.stdout)
    (s,) = data["steps"]
    assert "artifact 'big.txt' is 293.0 KiB, more than the cap of 100.0 KiB: not stored" in s["message"] and "--artifact-max" in s["message"]
    assert [x["name"] for x in s["artifacts"]] == ["note.txt"]
    assert [x["name"] for x in History(pg_url).artifacts(data["run_id"])] == ["note.txt"]


def test_a_server_follows_live_a_run_another_machine_records(lab_env, pg_url, tmp_path):
    runbooks = tmp_path / "runbooks"
    runbooks.mkdir()
    with running_server(runbooks=runbooks, inventory=lab_env.inventory_path, home=tmp_path / "server", extra_args=("--db", pg_url)) as server:
        viewer = sx("token", "create", "watcher", "--role", "viewer", "--db", pg_url, home=tmp_path / "admin").stdout.strip()  # another machine, one database
        proc = sx("run", runbook(tmp_path, lab_env, "followed", lines=6, pause=0.5), "--worker", "w1", "--db", pg_url, home=tmp_path / "cli", background=True)
        try:
            run_id = wait_for(lambda: [r.id for r in History(pg_url).runs(5) if r.runbook == "followed"], "the run in the history")[0]
            seen = []
            text_, end = follow_log(server, viewer, run_id, on_line=lambda chunk: seen.append(History(pg_url).run(run_id).status))
            assert proc.wait(300) == 0, proc.stderr.read()[-2000:]
        finally:
            if proc.poll() is None:
                proc.kill()
        assert end == {"status": "succeeded", "exit_code": 0}
        assert "running" in seen  # lines came while the run went on, on another "machine"
        assert text_.encode() == stored_log(run_id, pg_url) and "w1/s | followed line 6" in text_
        with server.client(viewer) as c:
            detail = c.get(f"/api/runs/{run_id}").json()
            art = next(a for a in detail["artifacts"] if a["name"] == "big.txt")
            r = c.get(art["url"])
        assert r.status_code == 200 and r.content == stored_artifact(run_id, "w1", "big.txt", pg_url) == b"a" * 300000
        assert r.headers["content-length"] == "300000" and r.headers["content-disposition"].startswith("attachment")
