"""Reaching the history's database: a URL never holds a password, the password comes from PGPASSWORD, a
PGPASSFILE or --db-password-file, and no message shows it; an unreachable database is exit 3, naming its URL."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from labkit import REPO

from sshexec.lab.postgres import free_port
from sshexec.store.db import Database, shown


def sx(*args, env=None):
    return subprocess.run([sys.executable, "-m", "sshexec", *map(str, args)], capture_output=True, text=True, cwd=REPO, timeout=120, env=env)


@pytest.fixture
def pg_env(postgres, request):
    """An upgraded PostgreSQL database, and an environment without its password."""
    import uuid

    name = "a_" + uuid.uuid4().hex[:12]
    url = postgres.create_database(name)
    request.addfinalizer(lambda: postgres.drop_database(name))
    os.environ["PGPASSWORD"] = postgres.password
    try:
        Database(url).upgrade()
    finally:
        del os.environ["PGPASSWORD"]
    env = {k: v for k, v in os.environ.items() if k not in ("PGPASSWORD", "PGPASSFILE", "SSHEXEC_DB")}
    env["PGPASSFILE"] = os.devnull  # not ~/.pgpass of whoever runs the tests
    return url, postgres.password, env


def test_the_database_unreachable_at_start_is_exit_3_naming_the_url(pg_env, tmp_path):
    url, password, env = pg_env
    port = free_port()  # nothing listens there
    dead = f"postgresql://sshexec@127.0.0.1:{port}/history"
    for argv in (["runs"], ["logs"], ["token", "list"], ["db", "upgrade"], ["history", "prune", "--older-than", "1"]):
        res = sx(*argv, "--db", dead, env={**env, "PGPASSWORD": password})
        assert res.returncode == 3, (argv, res.stderr)
        assert f"database {dead}: connection failed" in res.stderr and "is PostgreSQL running there" in res.stderr, res.stderr
        assert password not in res.stderr + res.stdout and "Traceback" not in res.stderr
    # `run` says so before it contacts a worker (this one would take connect_timeout to fail).
    inv = tmp_path / "inv.yaml"
    inv.write_text("workers:\n  - {name: w1, host: 127.0.0.1, port: %d, pools: [linux]}\n" % free_port())
    rb = tmp_path / "rb.yaml"
    rb.write_text("name: rb\nsteps:\n  - {name: s, pool: linux, container: {image: x}, script: {syntax: sh, inline: 'true'}}\n")
    res = sx("run", rb, "--inventory", inv, "--db", dead, env={**env, "PGPASSWORD": password})
    assert res.returncode == 3 and f"database {dead}: connection failed" in res.stderr and "w1" not in res.stderr
    assert password not in res.stderr


def test_a_wrong_password_is_exit_3_and_never_shown(pg_env):
    url, password, env = pg_env
    wrong = "wrong-" + password
    res = sx("runs", "--db", url, env={**env, "PGPASSWORD": wrong})
    assert res.returncode == 3 and "password authentication failed" in res.stderr and url in res.stderr
    assert wrong not in res.stderr and password not in res.stderr
    res = sx("runs", "--db", url, env=env)  # no password at all
    assert res.returncode == 3 and password not in res.stderr


def test_a_password_in_the_url_is_refused_without_showing_it(pg_env):
    url, password, env = pg_env
    with_pw = url.replace("sshexec@", f"sshexec:{password}@")
    for where in ({"argv": ["--db", with_pw]}, {"env": {"SSHEXEC_DB": with_pw}}):
        res = sx("runs", *where.get("argv", []), env={**env, **where.get("env", {})})
        assert res.returncode == 2 and "holds a password" in res.stderr and "PGPASSWORD" in res.stderr
        assert password not in res.stderr and shown(with_pw) in res.stderr and "sshexec:***@" in res.stderr


def test_the_password_from_a_file_or_the_environment(pg_env, tmp_path):
    url, password, env = pg_env
    pw = tmp_path / "pw"
    pw.write_text(password + "\n")
    pw.chmod(0o644)
    res = sx("token", "create", "ci", "--role", "viewer", "--db", url, "--db-password-file", pw, env=env)
    assert res.returncode == 2 and "may be read by others" in res.stderr and f"chmod 600 {pw}" in res.stderr
    pw.chmod(0o600)
    res = sx("token", "create", "ci", "--role", "viewer", "--db", url, "--db-password-file", pw, env=env)
    assert res.returncode == 0 and res.stdout.startswith("sx_"), res.stderr
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"127.0.0.1:*:*:sshexec:{password}\n")
    pgpass.chmod(0o600)
    res = sx("token", "list", "--json", env={**env, "PGPASSFILE": str(pgpass), "SSHEXEC_DB": url})
    assert res.returncode == 0 and '"ci"' in res.stdout, res.stderr
