"""Where the history lives: a database URL, its engine, its schema revision, and the one place
where the database's errors become sshexec's.

    sqlite:///PATH                    the default: $SSHEXEC_HOME/history.db (one machine needs nothing else)
    postgresql://USER@HOST:PORT/DB    one history shared by several machines (psycopg 3)

`--db URL`, else $SSHEXEC_DB, else the default. A URL never holds a password:
a command line is visible to every user of the machine (`ps`). libpq reads
PGPASSWORD, or PGPASSFILE (default ~/.pgpass), itself; `password_file` names a
file holding the password alone (mode 0600). The password never enters the
URL, so no message, log or repr can show it.

Schema revisions are Alembic's (store/migrations/). Before a command uses the
database, `ready()` compares the database's revision with this sshexec's:

- SQLite, the one-machine default, is upgraded in place at once, under a
  file lock (nobody else shares it, and a person who installs a newer sshexec
  should not have to learn a new command to keep their history);
- PostgreSQL is shared by several machines, some of which may still run an
  older sshexec: it is never changed behind anyone's back. A command meets
  a DatabaseError (exit 3) that says to run `sshexec db upgrade`.

A database of a newer sshexec is refused either way, never downgraded.
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..core.local import state_home
from ..errors import DatabaseError, InputError
from .schema import REVISION

log = logging.getLogger("sshexec")

SCHEMES = {"sqlite": "sqlite+pysqlite", "postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg"}
CONNECT_TIMEOUT = 10  # seconds to reach PostgreSQL before the command gives up (exit 3)
BUSY_TIMEOUT_MS = 30_000  # SQLite: how long a writer waits for another process's transaction
WHERE_PASSWORDS_GO = "put it in PGPASSWORD, in a PGPASSFILE (host:port:db:user:password), or in a file named by --db-password-file"


def default_url() -> str:
    return f"sqlite:///{state_home() / 'history.db'}"


def resolve(url: str | None = None) -> str:
    """--db if given, else $SSHEXEC_DB, else the SQLite history under $SSHEXEC_HOME."""
    return url or os.environ.get("SSHEXEC_DB") or default_url()


def shown(url) -> str:
    """A URL as people may see it: without a password, whatever was given."""
    from sqlalchemy.engine import make_url

    try:
        u = make_url(str(url))
    except Exception:  # noqa: BLE001 - not a URL at all: show none of it past the scheme
        return str(url).split("://", 1)[0] + "://…"
    return u.render_as_string(hide_password=True)  # a password, if any, shows as ***


def parse(url: str):
    """A SQLAlchemy URL for `url`, with psycopg 3 as PostgreSQL's driver; InputError (exit 2) if it is not one sshexec takes."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        u = make_url(url)
    except ArgumentError:
        raise InputError(
            f"database URL {shown(url)!r} is not a URL", field="--db",
            hint="sqlite:///PATH, or postgresql://USER@HOST:PORT/DB",
        ) from None  # fmt: skip
    scheme = u.drivername.split("+", 1)[0]
    if scheme not in SCHEMES or (u.drivername != scheme and u.drivername != SCHEMES[scheme]):
        raise InputError(f"database URL {shown(url)}: sshexec keeps its history in SQLite or PostgreSQL", field="--db", hint="sqlite:///PATH, or postgresql://USER@HOST:PORT/DB")
    if u.password is not None:
        raise InputError(
            f"database URL {shown(url)} holds a password: a command line is visible to every user of this machine (ps)",
            field="--db", hint=f"leave the password out of the URL and {WHERE_PASSWORDS_GO}",
        )  # fmt: skip
    u = u.set(drivername=SCHEMES[scheme])
    if scheme == "sqlite":
        if not u.database or u.database == ":memory:":
            raise InputError(f"database URL {shown(url)}: name the SQLite file, e.g. sqlite:///{state_home() / 'history.db'}", field="--db")
        u = u.set(database=str(Path(u.database).expanduser().absolute()))
    elif not u.database:
        raise InputError(f"database URL {shown(url)}: name the database, e.g. postgresql://sshexec@127.0.0.1:5432/sshexec", field="--db")
    return u


def read_password_file(path: str | Path) -> str:
    """The password alone in a file only its owner may read; InputError otherwise."""
    p = Path(path).expanduser()
    try:
        st = p.stat()
        text = p.read_text()
    except OSError as exc:
        raise InputError(f"--db-password-file {p}: {exc.strerror or exc}", field="--db-password-file") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InputError(f"--db-password-file {p} may be read by others (mode {stat.S_IMODE(st.st_mode):o})", field="--db-password-file", hint=f"chmod 600 {p}")
    password = text.rstrip("\r\n")
    if not password:
        raise InputError(f"--db-password-file {p} is empty", field="--db-password-file")
    return password


class Database:
    """One database: its engine (a pool, shared by the threads of a process) and how to talk to it.

    `url` is what people see (no password, ever); `dialect` is "sqlite" or "postgresql".
    """

    def __init__(self, url: str | None = None, *, password_file: str | Path | None = None):
        from sqlalchemy import create_engine, event

        self.sa_url = parse(resolve(url))
        self.url = shown(self.sa_url.set(drivername=self.sa_url.get_backend_name()))
        self.dialect = self.sa_url.get_backend_name()
        self._ready = False
        self._ready_lock = threading.Lock()
        self._writer = _writer_lock(self.sa_url.database) if self.dialect == "sqlite" else None
        if self.dialect == "sqlite":
            self.path = Path(self.sa_url.database)
            self.engine = create_engine(self.sa_url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False})
            event.listen(self.engine, "connect", _sqlite_connect)
            event.listen(self.engine, "begin", _sqlite_begin)
        else:
            self.path = None
            args = {"connect_timeout": CONNECT_TIMEOUT, "application_name": "sshexec"}
            if password_file is not None:
                args["password"] = read_password_file(password_file)
            self.engine = create_engine(self.sa_url, connect_args=args, pool_pre_ping=True, pool_size=5, max_overflow=20)

    @classmethod
    def of(cls, where=None) -> "Database":
        """`where`: a Database (itself), a URL, a directory (its history.db: a home as before), or None (the default)."""
        if isinstance(where, Database):
            return where
        if isinstance(where, Path):
            return cls(f"sqlite:///{where / 'history.db'}")
        return cls(where)

    @property
    def home(self) -> Path | None:
        """The directory of a SQLite history (where the files of sshexec before its database lived); None for PostgreSQL."""
        return self.path.parent if self.path is not None else None

    def __repr__(self) -> str:
        return f"Database({self.url!r})"

    # -- transactions ----------------------------------------------------------------------

    @contextmanager
    def read(self) -> Iterator:
        """A connection in a transaction that only reads."""
        with self.errors(), self.engine.begin() as conn:
            yield conn

    @contextmanager
    def write(self) -> Iterator:
        """A connection in a transaction that writes: on SQLite it takes the write lock at once
        (BEGIN IMMEDIATE), so that it waits for another writer instead of failing half-way.

        On SQLite the threads of one process take turns on a lock of their own first: one waits for
        another's commit and starts right after it, where SQLite's busy handler would have it sleep and
        poll (1, 2, 5, 10... ms; 16 workers' step rows written at once: 18 -> 14 ms each, measured once).
        Another process's writer is still waited for by SQLite's busy timeout."""
        with _turn(self._writer), self.errors(), self.engine.connect() as conn:
            conn = conn.execution_options(sqlite_begin="BEGIN IMMEDIATE")
            with conn.begin():
                yield conn

    @contextmanager
    def errors(self) -> Iterator[None]:
        """The boundary: a database failure becomes a DatabaseError naming the URL (never a password,
        never the statement or its values: those may hold a run's log)."""
        from sqlalchemy import exc as sa

        try:
            yield
        except sa.DBAPIError as exc:
            if isinstance(exc, (sa.IntegrityError,)):
                raise
            raise DatabaseError(self.url, f"database {self.url}: {_reason(exc)}", hint=self._hint(exc)) from None
        except sa.SQLAlchemyError as exc:
            raise DatabaseError(self.url, f"database {self.url}: {type(exc).__name__}: {_first_line(str(exc))}") from None

    def _hint(self, exc) -> str | None:
        text = str(getattr(exc, "orig", exc)).lower()
        if "password" in text or "authentication" in text:
            return f"check the user in the URL and its password: {WHERE_PASSWORDS_GO}"
        if self.dialect == "postgresql" and ("connect" in text or "timeout" in text or "refused" in text):
            return "is PostgreSQL running there, and does it accept connections from this machine? (pg_isready -h HOST -p PORT)"
        return None

    # -- the schema's revision -------------------------------------------------------------

    def revision(self) -> str | None:
        """The database's schema revision; None for a database without sshexec's migrations (empty, or older)."""
        from sqlalchemy import text

        with self.read() as conn:
            if not _has_table(conn, "alembic_version"):
                return None
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()

    def ready(self) -> "Database":
        """Check once per process that the schema is this sshexec's (SQLite: upgrade it); DatabaseError otherwise."""
        with self._ready_lock:
            if self._ready:
                return self
            if self.dialect == "sqlite":
                self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                with _file_lock(self.path.with_name(self.path.name + ".lock")):
                    have = self.revision()
                    if have != REVISION:
                        self.check_known(have)
                        self.upgrade()
                try:
                    self.path.chmod(0o600)
                except OSError:
                    pass
            else:
                have = self.revision()
                if have != REVISION:
                    self.check_known(have)
                    what = "has no sshexec tables yet" if have is None else f"is at schema revision {have}, and this sshexec needs {REVISION}"
                    raise DatabaseError(self.url, f"database {self.url} {what}", hint=f"run: sshexec db upgrade --db {self.url}")
            self._ready = True
            return self

    def check_known(self, have: str | None) -> None:
        """DatabaseError if `have` is a revision this sshexec does not know: a newer one made it."""
        from .migrate import known_revisions

        if have is not None and have not in known_revisions():
            raise DatabaseError(
                self.url, f"database {self.url} is at schema revision {have}, which a newer sshexec made",
                hint="upgrade sshexec on this machine; a database is never downgraded",
            )  # fmt: skip

    def upgrade(self) -> tuple[str | None, str]:
        """Migrate to this sshexec's revision (store/migrate.py); (before, after)."""
        from .migrate import upgrade

        return upgrade(self)

    def close(self) -> None:
        self.engine.dispose()


# An agent's child (agent_main) keeps the SQLite databases its commands opened, engine and all: the
# next command there skips making the engine, checking the schema and compiling its statements again
# (≈ 4 ms of a warm step). One is kept while its file is the same file (device and inode: a file
# replaced or removed since gets a new Database, checked again); PostgreSQL's never are.
_kept: dict[str, tuple[tuple[int, int], Database]] | None = None
KEEP_AT_MOST = 4


def keep_open() -> None:
    """From now on this process keeps the SQLite databases it opens through `opened` (an agent's child)."""
    global _kept
    if _kept is None:
        _kept = {}


def opened(url: str | None = None, *, password_file: str | Path | None = None) -> Database:
    """`Database(url, password_file=...).ready()`, or the same SQLite database an earlier command of this
    process opened while its file is still the same file (`keep_open`)."""
    if _kept is None or password_file is not None:
        return Database(url, password_file=password_file).ready()
    sa_url = parse(resolve(url))
    if sa_url.get_backend_name() != "sqlite":
        return Database(url).ready()
    key = sa_url.database
    was = _kept.pop(key, None)
    if was is not None and was[0] == _file_id(Path(key)):
        _kept[key] = was  # the most recently used last
        return was[1]
    if was is not None:
        was[1].close()
    db = Database(url).ready()
    fid = _file_id(Path(key))
    if fid is not None:
        _kept[key] = (fid, db)
        while len(_kept) > KEEP_AT_MOST:
            _kept.pop(next(iter(_kept)))[1].close()
    return db


_writers: dict[str, threading.RLock] = {}
_writers_lock = threading.Lock()
TURN_WAIT = BUSY_TIMEOUT_MS / 1000  # a writer waits this long for its turn, then goes on to SQLite's own wait


@contextmanager
def _turn(lock: threading.RLock | None) -> Iterator[None]:
    """This process's turn to write (SQLite; None: PostgreSQL, whose writers need none). A turn that does not
    come within TURN_WAIT (a writer of this process waiting on this one) goes on to SQLite, as before."""
    got = lock.acquire(timeout=TURN_WAIT) if lock is not None else False
    try:
        yield
    finally:
        if got:
            lock.release()


def _writer_lock(path: str) -> threading.RLock:
    """The lock this process's writers to SQLite file `path` take turns on (every Database of that file shares it).
    Re-entrant: a write inside a write goes on to SQLite as before."""
    with _writers_lock:
        return _writers.setdefault(path, threading.RLock())


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _sqlite_connect(dbapi_conn, record) -> None:
    # The driver's own transaction handling is off: _sqlite_begin says BEGIN (or BEGIN IMMEDIATE) itself.
    dbapi_conn.isolation_level = None
    dbapi_conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    # Switching to WAL takes a lock the busy handler does not wait for: two processes
    # opening a new history at once retry (at most 100 x 0.1 s).
    for attempt in range(100):
        try:
            dbapi_conn.execute("PRAGMA journal_mode = WAL")
            break
        except Exception as exc:  # noqa: BLE001 - sqlite3.OperationalError, "database is locked"
            if "locked" not in str(exc) or attempt == 99:
                raise
            time.sleep(0.1)
    dbapi_conn.execute("PRAGMA synchronous = NORMAL")


def _sqlite_begin(conn) -> None:
    conn.exec_driver_sql(conn.get_execution_options().get("sqlite_begin", "BEGIN"))


def _has_table(conn, name: str) -> bool:
    from sqlalchemy import inspect

    return inspect(conn).has_table(name)


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _reason(exc) -> str:
    orig = getattr(exc, "orig", None)
    return _first_line(str(orig if orig is not None else exc)) or type(exc).__name__


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    # psycopg: 'connection failed: connection to server at "127.0.0.1", port 5 failed: Connection refused' and
    # a second line with the detail ("Is the server running on that host..."): the first says enough.
    return lines[0] if lines else ""
