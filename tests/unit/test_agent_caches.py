"""What a reusable agent child keeps between commands, without a daemon: parsed YAML (re-read when the bytes change),
the pool's login key (changed by a key file's stamp), and the scrub of secrets from a process's own memory."""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
import textwrap

import pytest

from sshexec.config import _yaml


@pytest.fixture
def keeping(monkeypatch):
    monkeypatch.setattr(_yaml, "_keep", True)
    monkeypatch.setattr(_yaml, "_parsed", {})
    return _yaml


def test_a_kept_parse_is_reused_until_the_bytes_change(keeping, tmp_path, monkeypatch):
    f = tmp_path / "rb.yaml"
    f.write_text("name: a\nsteps: [1, 2]\n")
    parses = []
    real = _yaml._parse
    monkeypatch.setattr(_yaml, "_parse", lambda text, path: parses.append(text) or real(text, path))
    first = _yaml.read_yaml(f, "runbook")
    first["name"] = "changed by the caller"
    second = _yaml.read_yaml(f, "runbook")
    assert second == {"name": "a", "steps": [1, 2]} and len(parses) == 1, "parsed once; each caller gets its own copy"
    assert second.lines == {"name": 1, "steps": 2} and _yaml.line_of(second, ("steps", 1)) == 2
    st = f.stat()
    f.write_text("name: b\nsteps: [1, 2]\n")  # same size
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the same mtime: only the bytes differ
    assert _yaml.read_yaml(f, "runbook")["name"] == "b" and len(parses) == 2


def test_without_keeping_every_read_parses(tmp_path, monkeypatch):
    monkeypatch.setattr(_yaml, "_keep", False)
    f = tmp_path / "inv.yaml"
    f.write_text("workers: []\n")
    parses = []
    real = _yaml._parse
    monkeypatch.setattr(_yaml, "_parse", lambda text, path: parses.append(text) or real(text, path))
    _yaml.read_yaml(f, "inventory")
    _yaml.read_yaml(f, "inventory")
    assert len(parses) == 2


def test_the_login_key_follows_the_identity_files_stamp(tmp_path, monkeypatch):
    from sshexec.config.inventory import Worker
    from sshexec.ssh import _route, pool

    monkeypatch.setenv("SSHEXEC_SSH_CONFIG", "")
    _route.reset_ssh_config()
    key = tmp_path / "id"
    key.write_text("k1")
    w = Worker(name="w", host="127.0.0.1", port=22, user="u", identity_file=key, known_hosts=tmp_path / "kh", docker=("docker",), work_root="~/.sshexec",
               connect_timeout=5.0)  # fmt: skip
    first = pool.login_key(w)
    assert pool.login_key(w) == first
    st = key.stat()
    os.utime(key, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert pool.login_key(w) != first, "a rewritten identity file is another login"


SCRUBBED = textwrap.dedent(r'''
    import os, sys
    from sshexec.agent import scrub
    env = dict(os.environ)
    copies = [("x" + env["API_TOKEN"] + "y")[1:-1] for _ in range(3)]
    os.environ.clear()
    needles = scrub.needles(set(), env, {})
    copies = env = None
    if sys.argv[1] == "scrub":
        scrub.scrub(needles)
    print("ready", flush=True)
    sys.stdin.read()
''')


@pytest.mark.parametrize("mode", ["scrub", "keep"])
def test_scrub_wipes_every_copy_of_a_secret_from_the_process(mode):
    token = "client-" + secrets.token_hex(12)
    proc = subprocess.Popen([sys.executable, "-c", SCRUBBED, mode], env={"API_TOKEN": token, "PYTHONPATH": os.getcwd()},
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == b"ready"
        from agentkit import agent_memory_holds

        assert agent_memory_holds(proc.pid, token.encode()) == (mode == "keep"), "the scan finds it unless wiped"
    finally:
        proc.stdin.close()
        proc.wait(30)


@pytest.fixture
def keeping_db(monkeypatch):
    from sshexec.store import db

    monkeypatch.setattr(db, "_kept", {})
    yield db
    for _fid, d in db._kept.values():
        d.close()


def test_a_kept_database_is_reused_while_its_file_is_the_same_file(keeping_db, tmp_path):
    from sshexec.store.history import History

    url = f"sqlite:///{tmp_path / 'h' / 'history.db'}"
    first = keeping_db.opened(url)
    History(first).start_run("r1", "rb", runbook_path="rb.yaml", inventory="inv.yaml", variables={})
    assert keeping_db.opened(url) is first, "the engine, its checked schema and its compiled statements are kept"
    # The file replaced (a restore, say): another file, opened and checked again.
    other = tmp_path / "other.db"
    keeping_db.Database(f"sqlite:///{other}").ready().close()
    os.replace(other, tmp_path / "h" / "history.db")
    second = keeping_db.opened(url)
    assert second is not first and second.engine is not first.engine and second.revision() is not None
    # The file removed: a new one is made (and upgraded) as on a first run.
    (tmp_path / "h" / "history.db").unlink()
    third = keeping_db.opened(url)
    assert third is not second and third.revision() is not None and (tmp_path / "h" / "history.db").exists()


def test_only_sqlite_and_only_a_few_databases_are_kept(keeping_db, tmp_path):
    urls = [f"sqlite:///{tmp_path / f'{i}.db'}" for i in range(keeping_db.KEEP_AT_MOST + 2)]
    opened = [keeping_db.opened(u) for u in urls]
    assert len(keeping_db._kept) == keeping_db.KEEP_AT_MOST
    assert keeping_db.opened(urls[-1]) is opened[-1] and keeping_db.opened(urls[0]) is not opened[0], "the least recently used went"


def test_without_keeping_every_command_opens_its_own(tmp_path, monkeypatch):
    from sshexec.store import db

    monkeypatch.setattr(db, "_kept", None)
    url = f"sqlite:///{tmp_path / 'history.db'}"
    a, b = db.opened(url), db.opened(url)
    assert a is not b
    a.close(), b.close()


def test_what_a_table_measured_is_forgotten_between_commands():
    """cell_width parses each cell's markup once per table (tables.py); an agent's child forgets the cells
    with the command's options (common.forget_options, at each command's start and end)."""
    from sshexec.cli import common, tables

    common.forget_options()
    assert tables.cell_width("[red]failed[/] (2/3)") == len("failed (2/3)") and tables.cell_width("a\nlonger") == 6
    tables.cell_width("[red]failed[/] (2/3)")
    assert tables.cell_width.cache_info().hits == 1 and tables.cell_width.cache_info().currsize == 2
    common.forget_options()
    assert tables.cell_width.cache_info().currsize == 0


def test_the_threads_of_one_process_take_turns_to_write_sqlite(tmp_path, monkeypatch, caplog):
    """Sixteen workers' step rows at once: each thread waits for its turn on the process's own lock and starts
    right after the commit before it, never in SQLite's busy handler (here allowed 1 ms: without the turns,
    writers collide and fail with "database is locked")."""
    import threading

    from sshexec.store import db as dbmod
    from sshexec.store.history import History

    caplog.set_level(logging.WARNING, logger="sshexec")
    monkeypatch.setattr(dbmod, "BUSY_TIMEOUT_MS", 1)
    h = History(dbmod.Database(f"sqlite:///{tmp_path / 'history.db'}"))
    h.start_run("r1", "rb", runbook_path="rb.yaml", inventory="inv.yaml", variables={})
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for n in range(25):
                h.start_step("r1", n, f"s{n}", f"w{i}")
                h.finish_step("r1", f"s{n}", f"w{i}", status="succeeded", exit_code=0, message=None, outputs={})
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    locked = [r.getMessage() for r in caplog.records if "waits for the database" in r.getMessage()]
    assert locked == [], locked[:3]  # a write that met another and was tried again (History._patiently)
    assert len(h.steps("r1")) == 8 * 25
    h.close()
