"""API tokens: shown once, stored hashed in a 0600 file, roles, revocation, concurrent writers."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from labkit import REPO

from sshexec.errors import InputError
from sshexec.store.tokens import ROLES, TokenStore


def test_a_token_is_stored_hashed_in_a_private_file(tmp_path):
    store = TokenStore(tmp_path)
    token = store.create("alice", "operator")
    assert token.startswith("sx_") and len(token) > 40
    text = (tmp_path / "tokens.json").read_text()
    assert token not in text and token[3:] not in text
    assert stat.S_IMODE((tmp_path / "tokens.json").stat().st_mode) == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tokens-")], "no temporary file left"
    info = store.verify(token)
    assert (info.name, info.role) == ("alice", "operator")
    assert store.verify(token + "x") is None and store.verify("") is None and store.verify(None) is None
    assert store.verify(token[3:]) is None


def test_roles_include_the_ones_below(tmp_path):
    store = TokenStore(tmp_path)
    infos = {r: store.verify(store.create(f"t-{r}", r)) for r in ROLES}
    assert [r for r in ROLES if infos["viewer"].allows(r)] == ["viewer"]
    assert [r for r in ROLES if infos["operator"].allows(r)] == ["viewer", "operator"]
    assert [r for r in ROLES if infos["admin"].allows(r)] == list(ROLES)


def test_revoke_takes_effect_for_a_reader_that_cached_the_file(tmp_path):
    writer, reader = TokenStore(tmp_path), TokenStore(tmp_path)
    token = writer.create("ci", "viewer")
    assert reader.verify(token) is not None
    writer.revoke("ci")
    assert reader.verify(token) is None
    with pytest.raises(InputError, match="no token named 'ci'"):
        writer.revoke("ci")


@pytest.mark.parametrize(("name", "role", "says"), [("a b", "viewer", "bad token name"), ("../x", "viewer", "bad token name"), ("", "viewer", "bad token name"), ("ok", "root", "--role must be one of viewer, operator, admin")])
def test_bad_names_and_roles(tmp_path, name, role, says):
    with pytest.raises(InputError, match=says):
        TokenStore(tmp_path).create(name, role)
    assert not (tmp_path / "tokens.json").exists()


def test_a_name_is_taken_once(tmp_path):
    store = TokenStore(tmp_path)
    store.create("x", "viewer")
    with pytest.raises(InputError, match="exists already"):
        store.create("x", "admin")
    assert [t.role for t in store.list()] == ["viewer"]


def test_concurrent_creates_lose_no_token(tmp_path):
    store = TokenStore(tmp_path)
    with ThreadPoolExecutor(8) as pool:
        tokens = list(pool.map(lambda i: TokenStore(tmp_path).create(f"t{i}", "viewer"), range(40)))
    assert sorted(t.name for t in store.list()) == sorted(f"t{i}" for i in range(40))
    assert all(store.verify(t) for t in tokens)


def test_the_cli_prints_the_token_alone_on_stdout(tmp_path):
    env = {**os.environ, "SSHEXEC_HOME": str(tmp_path)}
    run = lambda *a: subprocess.run([sys.executable, "-m", "sshexec", "token", *a], capture_output=True, text=True, env=env, cwd=REPO, timeout=60)  # noqa: E731
    res = run("create", "deploy-bot", "--role", "operator")
    assert res.returncode == 0 and res.stdout.count("\n") == 1 and res.stdout.startswith("sx_")
    assert TokenStore(Path(tmp_path)).verify(res.stdout.strip()).role == "operator"
    listed = json.loads(run("list", "--json").stdout)
    assert [(t["name"], t["role"]) for t in listed] == [("deploy-bot", "operator")] and "sha256" not in listed[0]
    assert res.stdout.strip() not in run("list").stdout
    assert run("create", "x", "--role", "boss").returncode == 2
    assert run("revoke", "nobody").returncode == 2
    assert run("revoke", "deploy-bot").returncode == 0 and run("list", "--json").stdout.strip() == "[]"
