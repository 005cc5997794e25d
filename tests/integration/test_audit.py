"""The audit trail (issue 21), on SQLite and PostgreSQL: an entry for each action, who / when / from where / what,
through `sshexec audit`, GET /api/audit (admin) and the /audit page; no secret in it, ever."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
from labkit import sshexec, step, stop_run, wait_for_line, write_runbook, start_run
from serverkit import busybox, follow_log, long_runbook, running_server
from sqlalchemy import text

from sshexec.store.db import Database

SECRET = "audit-secret-" + os.urandom(6).hex()


def by_action(entries: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for e in entries:
        out.setdefault(e["action"], []).append(e)
    return out


def test_every_action_is_audited_and_no_secret_is(lab_env, db_url, tmp_path, monkeypatch):
    monkeypatch.setenv("AUDIT_SECRET", SECRET)
    env = {**os.environ}
    books = tmp_path / "runbooks"
    books.mkdir()
    sens = {"name": "sens", "variables": {"GREETING": "hi"}, "sensitive_variables": {"TOKEN": {"env": "AUDIT_SECRET"}},
            "steps": [step("s", busybox(lab_env), 'echo "$GREETING token $TOKEN"', syntax="sh", feed="lab")]}  # fmt: skip
    write_runbook(books / "sens.yaml", sens)
    write_runbook(books / "long.yaml", long_runbook(lab_env))
    # A step that holds the runbook's lock until the test has broken it (a file in its directory, bounded).
    hold = 'echo "holding in $PWD"; end=$(($(date +%s) + 120)); while [ ! -e go ] && [ "$(date +%s)" -lt "$end" ]; do sleep 0.2; done'
    holder_rb = write_runbook(tmp_path / "hold.yaml", {"name": "hold", "lock": "audit-maint", "steps": [step("s", busybox(lab_env), hold, syntax="sh", feed="lab")]})

    # The command line: tokens, a run with a secret and a --var, a lock broken, a gc.
    tokens = {}
    for name, role in (("adm", "admin"), ("op", "operator"), ("viewer", "viewer"), ("tmp", "viewer")):
        res = sshexec("token", "create", name, "--role", role, env=env)
        assert res.returncode == 0, res.stderr
        tokens[name] = res.stdout.strip()
    assert sshexec("token", "revoke", "tmp", env=env).returncode == 0
    res = sshexec("run", books / "sens.yaml", "--var", "GREETING=hello", "--json", env=env)
    assert res.returncode == 0, res.stderr
    cli_run = json.loads(res.stdout)["run_id"]
    holder = start_run(holder_rb, "--worker", "w1", env=env)
    try:
        where = Path(wait_for_line(holder, "| holding in ")[-1].split("| holding in ", 1)[1].strip())
        res = sshexec("unlock", "audit-maint", "--worker", "w1", "--yes", env=env)
        assert res.returncode == 0 and "broken" in res.stderr, res.stderr
        (where / "go").touch()
        holder.communicate(timeout=300)
    finally:
        stop_run(holder)
    res = sshexec("gc", "--worker", "w2", env=env)
    assert res.returncode == 0, res.stderr

    # The server: a trigger and a cancel by tokens, a failed login; who may read the trail.
    with running_server(runbooks=books, inventory=lab_env.inventory_path, home=Path(os.environ["SSHEXEC_HOME"])) as srv:
        with srv.client(tokens["op"]) as c:
            r = c.post("/api/runs", json={"runbook": "long", "vars": {}})
            assert r.status_code == 202, r.text
            long_id = r.json()["run_id"]

            def cancel_once_started(chunk):
                if "started sleeping" in chunk:
                    assert c.post(f"/api/runs/{long_id}/cancel").status_code == 202

            _, end = follow_log(srv, tokens["op"], long_id, on_line=cancel_once_started)
            assert end["status"] == "cancelled"
        tried = "sx_" + SECRET  # a token someone guessed: never written down
        with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {tried}"}) as c:
            assert c.get("/api/runs").status_code == 401
        with srv.client(tokens["viewer"]) as c:
            assert c.get("/api/audit").status_code == 403
            assert c.get("/audit").status_code == 403
        with srv.client(tokens["op"]) as c:
            assert c.get("/api/audit").status_code == 403
        with srv.client(tokens["adm"]) as c:
            api = c.get("/api/audit").json()["entries"]
            page = c.get("/audit")
            assert page.status_code == 200
            recent = c.get("/api/audit", params={"since": "1h", "action": "run.cancel"}).json()["entries"]
            assert [e["target"] for e in recent] == [long_id]

    entries = json.loads(sshexec("audit", "--json", env=env).stdout)
    assert entries == api  # the command line and the API show the same trail
    seen = by_action(entries)
    assert [e["target"] for e in seen["token.create"]] == ["adm", "op", "viewer", "tmp"]
    assert [e["detail"]["role"] for e in seen["token.create"]] == ["admin", "operator", "viewer", "viewer"]
    assert [e["target"] for e in seen["token.revoke"]] == ["tmp"]
    me = os.environ.get("USER") or os.environ.get("LOGNAME") or "root"
    assert all(e["who"] == me and e["source"].startswith("cli ") for e in seen["token.create"] + seen["token.revoke"])
    triggers = {e["target"]: e for e in seen["run.trigger"]}
    assert sorted(e["detail"]["runbook"] for e in triggers.values()) == ["hold", "long", "sens"] and {cli_run, long_id} <= set(triggers)
    assert triggers[cli_run]["detail"]["runbook"] == "sens" and triggers[cli_run]["detail"]["vars"] == ["GREETING"]
    assert triggers[cli_run]["who"] == me and triggers[cli_run]["source"].startswith("cli ")
    assert (triggers[long_id]["who"], triggers[long_id]["source"]) == ("token:op", "http 127.0.0.1")
    (cancel,) = seen["run.cancel"]
    assert (cancel["who"], cancel["source"], cancel["target"], cancel["detail"]) == ("token:op", "http 127.0.0.1", long_id, {"how": "cancelling"})
    (unlock,) = seen["lock.unlock"]
    assert unlock["target"] == "w1/audit-maint" and unlock["detail"]["worker"] == "w1"
    (gc,) = seen["gc"]
    assert gc["target"] == "w2" and gc["who"] == me
    (failed,) = seen["login.failed"]
    assert failed["source"] == "http 127.0.0.1"
    assert all(e["at"] <= time.time() for e in entries) and [e["id"] for e in entries] == sorted(e["id"] for e in entries)
    assert all(e["action"] in page.text for e in entries) and cli_run in page.text
    # No secret anywhere in the trail: not the runbook's sensitive value, not a token, not the one guessed.
    db = Database(db_url)
    with db.read() as conn:
        dump = "\n".join(conn.execute(text("SELECT CAST(t AS text) FROM audit t")).scalars().all()) if db.dialect == "postgresql" else \
            "\n".join(repr(r) for r in conn.execute(text("SELECT * FROM audit")).all())  # fmt: skip
    db.close()
    assert dump and SECRET not in dump and tried not in dump
    assert all(t not in dump for t in tokens.values())
    # --since keeps the newer ones only.
    assert json.loads(sshexec("audit", "--json", "--since", "2000-01-01", env=env).stdout) == entries
    assert json.loads(sshexec("audit", "--json", "--since", "2999-01-01", env=env).stdout) == []
    bad = sshexec("audit", "--since", "yesterday-ish", env=env)
    assert bad.returncode == 2 and "--since" in bad.stderr
