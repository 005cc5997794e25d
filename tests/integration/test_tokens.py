"""API tokens and browser sessions, in the history's database (SQLite and PostgreSQL): shown once, stored
hashed, roles, revocation everywhere at once, concurrent writers; a session's id is never stored."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from labkit import REPO
from sqlalchemy import select

from sshexec.errors import InputError
from sshexec.store.schema import sessions, tokens
from sshexec.store.sessions import SessionStore
from sshexec.store.tokens import ROLES, TokenStore, digest


def test_a_token_is_stored_hashed(db_url):
    store = TokenStore(db_url)
    token = store.create("alice", "operator")
    assert token.startswith("sx_") and len(token) > 40
    with store.db.read() as c:
        rows = [tuple(r) for r in c.execute(select(tokens))]
    assert rows and token not in repr(rows) and token[3:] not in repr(rows)
    info = store.verify(token)
    assert (info.name, info.role) == ("alice", "operator")
    assert store.verify(token + "x") is None and store.verify("") is None and store.verify(None) is None
    assert store.verify(token[3:]) is None


def test_roles_include_the_ones_below(db_url):
    store = TokenStore(db_url)
    infos = {r: store.verify(store.create(f"t-{r}", r)) for r in ROLES}
    assert [r for r in ROLES if infos["viewer"].allows(r)] == ["viewer"]
    assert [r for r in ROLES if infos["operator"].allows(r)] == ["viewer", "operator"]
    assert [r for r in ROLES if infos["admin"].allows(r)] == list(ROLES)


def test_revoke_ends_the_token_and_its_sessions_for_every_reader(db_url):
    writer, reader = TokenStore(db_url), TokenStore(db_url)  # two servers sharing the database
    token = writer.create("ci", "viewer")
    other = writer.create("other", "viewer")
    assert reader.verify(token) is not None
    sessions_a, sessions_b = SessionStore(db_url), SessionStore(db_url)
    sid, opened = sessions_a.open(digest(token), 3600)
    kept, _ = sessions_a.open(digest(other), 3600)
    assert sessions_b.get(sid) == opened  # the other server knows the session
    with sessions_a.db.read() as c:
        assert sid not in repr([tuple(r) for r in c.execute(select(sessions))])  # only its SHA-256 is stored
    writer.revoke("ci")
    assert reader.verify(token) is None and sessions_b.get(sid) is None and sessions_b.get(kept) is not None
    with pytest.raises(InputError, match="no token named 'ci'"):
        writer.revoke("ci")


@pytest.mark.parametrize(("name", "role", "says"), [("a b", "viewer", "bad token name"), ("../x", "viewer", "bad token name"), ("", "viewer", "bad token name"), ("ok", "root", "--role must be one of viewer, operator, admin")])
def test_bad_names_and_roles(tmp_path, name, role, says):
    store = TokenStore(tmp_path)
    with pytest.raises(InputError, match=says):
        store.create(name, role)
    assert store.list() == []


def test_a_name_is_taken_once(db_url):
    store = TokenStore(db_url)
    store.create("x", "viewer")
    with pytest.raises(InputError, match="exists already"):
        store.create("x", "admin")
    assert [t.role for t in store.list()] == ["viewer"]


def test_concurrent_creates_lose_no_token(db_url):
    store = TokenStore(db_url)
    with ThreadPoolExecutor(8) as pool:
        made = list(pool.map(lambda i: store.create(f"t{i}", "viewer"), range(40)))
    assert sorted(t.name for t in store.list()) == sorted(f"t{i}" for i in range(40))
    assert all(store.verify(t) for t in made)


def test_the_cli_prints_the_token_alone_on_stdout(db_url):
    env = {**os.environ}
    run = lambda *a: subprocess.run([sys.executable, "-m", "sshexec", "token", *a], capture_output=True, text=True, env=env, cwd=REPO, timeout=60)  # noqa: E731
    res = run("create", "deploy-bot", "--role", "operator")
    assert res.returncode == 0 and res.stdout.count("\n") == 1 and res.stdout.startswith("sx_")
    assert TokenStore(db_url).verify(res.stdout.strip()).role == "operator"
    listed = json.loads(run("list", "--json").stdout)
    assert [(t["name"], t["role"]) for t in listed] == [("deploy-bot", "operator")] and "sha256" not in listed[0]
    assert res.stdout.strip() not in run("list").stdout
    assert run("create", "x", "--role", "boss").returncode == 2
    assert run("revoke", "nobody").returncode == 2
    assert run("revoke", "deploy-bot").returncode == 0 and run("list", "--json").stdout.strip() == "[]"
