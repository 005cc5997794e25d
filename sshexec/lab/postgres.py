"""A PostgreSQL server of our own, as a process: for the tests and the benchmarks of the shared history.

Debian's `postgresql` package (scripts/bootstrap installs it) brings the
binaries; its own cluster is left alone. This starts another one: a data
directory in /tmp (the postgres user must reach it), a free port on
127.0.0.1, password authentication (scram-sha-256) for every connection
over TCP, and stops it by the PID in its postmaster.pid, never by name.

    with LocalPostgres() as pg:
        url = pg.create_database("t1")       # postgresql://sshexec@127.0.0.1:PORT/t1
        env = {"PGPASSWORD": pg.password}
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from ..core.local import pid_alive
from .errors import LabError

USER = "sshexec"


def pg_bin() -> Path:
    """The newest installed PostgreSQL's bin directory; LabError saying what to install if there is none."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if not found:
        raise LabError("PostgreSQL is not installed here", hint="apt-get install -y postgresql (scripts/bootstrap does)")
    return Path(found[-1]).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalPostgres:
    """A PostgreSQL cluster in a temporary directory, up from start() (or `with`) until stop()."""

    def __init__(self, port: int | None = None):
        self.bin = pg_bin()
        self.port = port or free_port()
        self.password = secrets.token_urlsafe(18)
        self.dir: Path | None = None
        self.pid: int | None = None

    def url(self, database: str = "postgres", user: str = USER) -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def _as_postgres(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run a PostgreSQL program as the postgres user (the server refuses root)."""
        cmd = ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else list(argv)
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if res.returncode != 0:
            raise LabError(f"{Path(argv[0]).name} failed: {(res.stderr or res.stdout).strip()[-800:]}")
        return res

    def start(self) -> "LocalPostgres":
        self.dir = Path(tempfile.mkdtemp(prefix="sshexec-pg-", dir="/tmp"))
        data = self.dir / "data"
        pwfile = self.dir / "pw"
        pwfile.write_text(self.password + "\n")
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
            shutil.chown(pwfile, "postgres", "postgres")
        pwfile.chmod(0o600)
        try:
            self._as_postgres(str(self.bin / "initdb"), "-A", "scram-sha-256", "-U", USER, f"--pwfile={pwfile}", "-D", str(data), "-E", "UTF8", "--no-sync")
            pwfile.unlink()
            opts = f"-p {self.port} -k {self.dir} -h 127.0.0.1 -c fsync=off -c full_page_writes=off -c max_connections=200"
            self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(data), "-l", str(self.dir / "log"), "-o", opts, "-w", "-t", "60", "start")
            self.pid = int((data / "postmaster.pid").read_text().split()[0])
        except BaseException:
            self.stop()
            raise
        return self

    def restart(self, mode: str = "fast", *, down: float = 0.0) -> None:
        """Stop the server by its PID (mode "immediate": as a crash would) and, `down` seconds later, start it
        again on the same data and port."""
        if self.pid is None or self.dir is None:
            raise LabError("this PostgreSQL is not running")
        os.kill(self.pid, signal.SIGQUIT if mode == "immediate" else signal.SIGINT)
        deadline = time.monotonic() + 60
        while pid_alive(self.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(down)
        data = self.dir / "data"
        opts = f"-p {self.port} -k {self.dir} -h 127.0.0.1 -c fsync=off -c full_page_writes=off -c max_connections=200"
        self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(data), "-l", str(self.dir / "log"), "-o", opts, "-w", "-t", "60", "start")
        self.pid = int((data / "postmaster.pid").read_text().split()[0])

    def create_database(self, name: str, *, template: str | None = None) -> str:
        """A new database, empty or a copy of `template` (which nobody may be connected to); its URL (no
        password: give PGPASSWORD=self.password)."""
        self._psql(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        self._psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _psql(self, sql: str) -> None:
        env = {**os.environ, "PGPASSWORD": self.password}
        res = subprocess.run(
            [str(self.bin / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, "-d", "postgres", "-c", sql],
            capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip
        if res.returncode != 0:
            raise LabError(f"psql {sql!r}: {res.stderr.strip()}")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server by its PID (SIGINT: fast shutdown; "immediate": SIGQUIT, as a crash would), and remove its directory."""
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGQUIT if mode == "immediate" else signal.SIGINT)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + 60
            while pid_alive(self.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if pid_alive(self.pid):
                os.kill(self.pid, signal.SIGKILL)
            self.pid = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> "LocalPostgres":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

