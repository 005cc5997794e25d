"""Keep the developer's own environment out of the tests."""

import os

import pytest
from labnames import longest_first, name_this_workers_lab

# Under pytest-xdist each worker has a test lab of its own (tests/labnames.py): set before
# tests/integration/conftest.py and the test modules read SSHEXEC_TEST_LAB and its ports.
name_this_workers_lab()

# testcontainers on this machine kind (shared/LAB.md): no ryuk, talk to 127.0.0.1.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
os.environ.setdefault("TESTCONTAINERS_CONNECTION_MODE", "docker_host")
os.environ.setdefault("TESTCONTAINERS_HOST_OVERRIDE", "127.0.0.1")


def pytest_configure(config):
    config.addinivalue_line("markers", "shares_cluster: runs on test_cluster.py's shared cluster (it neither kills, stops nor reconfigures it)")


@pytest.fixture(autouse=True)
def _isolated(request, tmp_path_factory, monkeypatch):
    """No ~/.ssh/config, no inherited inventory, a private state directory per test."""
    home = tmp_path_factory.mktemp("sshexec-home")
    monkeypatch.setenv("SSHEXEC_HOME", str(home))
    monkeypatch.setenv("SSHEXEC_SSH_CONFIG", os.devnull)
    monkeypatch.delenv("SSHEXEC_INVENTORY", raising=False)
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.setenv("SSHEXEC_CONNECT_RETRIES", "1")
    # No resident agent unless a test asks for one (tests/agentkit.py): an agent started by a test's
    # `sshexec` would outlive the test. SSHEXEC_TEST_AGENT=1 runs the whole session with one (the agent fixture).
    monkeypatch.setenv("SSHEXEC_AGENT", "0")
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    if os.environ.get("SSHEXEC_TEST_AGENT", "").strip() not in ("", "0") and "tests/integration" in str(request.node.fspath):
        agent = request.getfixturevalue("session_agent")
        for k, v in agent.env().items():
            monkeypatch.setenv(k, v)
        agent.ensure_up()
    from sshexec.ssh._route import reset_ssh_config

    reset_ssh_config()
    yield
    reset_ssh_config()


# -- the resident agent (tests/agentkit.py) ----------------------------------------------------------


@pytest.fixture(scope="session")
def session_agent(request, tmp_path_factory):
    """One agent for the whole session, under a runtime directory of its own; stopped at the end, and the
    session fails loudly if its process (or a command it ran) is left."""
    import shutil
    import tempfile
    from pathlib import Path

    from agentkit import RunningAgent

    # Not under pytest's basetemp: several sessions on one machine rotate those away (the agent would end, and
    # later commands would quietly run in-process). Short, too: a socket path holds 108 bytes.
    run_dir = Path(tempfile.mkdtemp(prefix="sxagent-"))
    agent = RunningAgent(run_dir)

    def stop() -> None:
        left = agent.stop()
        served = agent.served_total
        shutil.rmtree(run_dir, ignore_errors=True)
        print(f"\nthe session's agent served {served} command(s)")
        if left:
            pytest.fail("the test session's agent is not gone: " + "; ".join(left), pytrace=False)

    request.addfinalizer(stop)
    return agent


@pytest.fixture(params=["in-process", "agent"])
def both_modes(request, monkeypatch):
    """The test runs twice: with every command in-process (SSHEXEC_AGENT=0), and handed to the session's agent."""
    if request.param != "agent":
        monkeypatch.setenv("SSHEXEC_AGENT", "0")
        yield request.param
        return
    agent = request.getfixturevalue("session_agent")
    for k, v in agent.env().items():
        monkeypatch.setenv(k, v)
    before = agent.ensure_up()
    yield request.param
    after = agent.status()
    if after is None or after["pid"] != before["pid"]:
        try:
            tail = open(agent.paths().log, errors="replace").read().splitlines()[-15:]
        except OSError as exc:
            tail = [f"(no log: {exc})"]
        pytest.fail(f"the agent (pid {before['pid']}) did not survive the test: {after}; its log ends:\n" + "\n".join(tail), pytrace=False)


# -- the history's database: SQLite, and a PostgreSQL of the session's own ---------------------------


@pytest.fixture(scope="session")
def postgres(request):
    """One PostgreSQL per test session, started as a process (sshexec/lab/postgres.py, password auth on a free
    loopback port) the first time a test asks for it, stopped by its PID at the end; fails loudly if it is left."""
    from sshexec.core.local import pid_alive
    from sshexec.lab.postgres import LocalPostgres

    pg = LocalPostgres()

    def stop() -> None:
        pid, where = pg.pid, pg.dir
        pg.stop()
        if pid is not None and pid_alive(pid) or where is not None and where.exists():
            pytest.fail(f"the test session's PostgreSQL (pid {pid}, {where}) is not gone after stop()", pytrace=False)

    request.addfinalizer(stop)  # before start(): a server that failed half-way up is stopped too
    return pg.start()


def new_database(request, engine: str, tmp_path, monkeypatch) -> str:
    """A fresh history database of `engine`, upgraded; SSHEXEC_DB names it (and PGPASSWORD is the server's)."""
    from sshexec.store.db import Database

    if engine == "sqlite":
        url = f"sqlite:///{tmp_path / 'db' / 'history.db'}"
        Database(url).ready().close()
    else:
        import uuid

        pg = request.getfixturevalue("postgres")
        name = "t_" + uuid.uuid4().hex[:12]
        url = pg.create_database(name)
        monkeypatch.setenv("PGPASSWORD", pg.password)
        request.addfinalizer(lambda: pg.drop_database(name))
        db = Database(url)
        db.upgrade()
        db.close()
    monkeypatch.setenv("SSHEXEC_DB", url)
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path, monkeypatch):
    """The history tests run against both engines: a new database each, SSHEXEC_DB pointing at it."""
    return new_database(request, request.param, tmp_path, monkeypatch)


def pytest_collection_modifyitems(items):
    items.sort(key=longest_first)  # stable: the rest keep their order, each file stays whole
    for item in items:
        callspec = getattr(item, "callspec", None)
        if "postgres" in item.fixturenames or (callspec is not None and callspec.params.get("db_url") == "postgresql"):
            item.add_marker(pytest.mark.postgres)


# -- the host's Docker daemon under pytest-xdist -----------------------------------------------------
#
# A lab starts the host's dockerd when none answers (a clean CI machine) and stops it at `lab down`
# unless other containers use it. Under xdist several labs share that one daemon: the lab that started
# it may go down first, leave it running for the others, and nobody would stop it. So in a parallel
# session the controller owns it: started here before the workers' labs come up, stopped at the end.

_host_dockerd: list[int] = []


def _runs_integration(config) -> bool:
    from pathlib import Path

    unit = (Path(str(config.rootpath)) / "tests" / "unit").resolve()
    args = [a.split("::")[0] for a in config.args if not a.startswith("-")] or ["."]
    return any(not Path(a).resolve().is_relative_to(unit) for a in args)


def pytest_sessionstart(session):
    config = session.config
    if hasattr(config, "workerinput") or not getattr(config.option, "numprocesses", None) or not _runs_integration(config):
        return
    from pathlib import Path

    from sshexec.lab import daemon

    state = Path(os.environ.get("SSHEXEC_HOME") or Path.home() / ".local/share/sshexec").expanduser()
    state.mkdir(parents=True, exist_ok=True)
    pid = daemon.ensure_daemon(state / "test-dockerd.log")  # None: one answers already (not ours to stop)
    if pid is not None:
        _host_dockerd.append(pid)


def pytest_sessionfinish(session):
    if hasattr(session.config, "workerinput") or not _host_dockerd:
        return
    import subprocess

    from sshexec.lab import daemon

    pid = _host_dockerd.pop()
    others = subprocess.run(["docker", "ps", "-aq"], capture_output=True, text=True).stdout.split()
    if others:
        print(f"\nthe session's dockerd (pid {pid}) is left running: {len(others)} container(s) are on it")
    elif not daemon.stop_daemon(pid):
        print(f"\nthe session's dockerd (pid {pid}) did not stop")
