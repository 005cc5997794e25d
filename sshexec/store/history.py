"""Run history: SQLite in the state directory, plus each run's masked log and artifacts.

    $SSHEXEC_HOME (default ~/.local/share/sshexec)/
        history.db                      runs, steps, artifacts
        runs/<run id>/output.log        the masked log, as streamed
        runs/<run id>/artifacts/<worker>/<name>

A run is recorded when it starts, so a crash still leaves a record (status
"running" with a PID that is gone shows as "interrupted"). Several sshexec
processes may write at once (WAL, busy timeout). Only masked text is stored.
"""

from __future__ import annotations

import getpass
import json
import os
import secrets
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..core.local import pid_alive, process_identity, state_home
from ..core.retry import retry
from ..errors import InputError

STEPS_TABLE = """
CREATE TABLE IF NOT EXISTS steps (
    run_id TEXT NOT NULL REFERENCES runs(id),
    seq INTEGER NOT NULL,
    step TEXT NOT NULL,
    worker TEXT NOT NULL,
    status TEXT NOT NULL,
    exit_code INTEGER,
    started REAL,
    finished REAL,
    message TEXT,
    outputs TEXT,
    attempt INTEGER NOT NULL DEFAULT 1,
    attempts INTEGER NOT NULL DEFAULT 1,
    carried_from TEXT,
    PRIMARY KEY (run_id, step, worker, attempt)
)
"""

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    runbook TEXT NOT NULL,
    runbook_path TEXT,
    inventory TEXT,
    started REAL NOT NULL,
    finished REAL,
    status TEXT NOT NULL,
    exit_code INTEGER,
    message TEXT,
    pid INTEGER,
    host TEXT,
    variables TEXT,
    started_by TEXT,
    runbook_hash TEXT,
    retry_of TEXT,
    options TEXT,
    pid_start TEXT
);
""" + STEPS_TABLE + """;
CREATE TABLE IF NOT EXISTS artifacts (
    run_id TEXT NOT NULL REFERENCES runs(id),
    step TEXT NOT NULL,
    worker TEXT NOT NULL,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_started ON runs(started);
"""
RUN_COLUMNS = "id, runbook, runbook_path, inventory, started, finished, status, exit_code, message, pid, host, variables, started_by, runbook_hash, retry_of, options, pid_start"
# Histories written by an older sshexec lack these columns of runs, and key steps without the attempt.
ADDED_RUN_COLUMNS = ("started_by", "runbook_hash", "retry_of", "options", "pid_start")
STEP_COLUMNS = "run_id, seq, step, worker, status, exit_code, started, finished, message, outputs"


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


@dataclass(frozen=True)
class RunRecord:
    id: str
    runbook: str
    started: float
    finished: float | None
    status: str
    exit_code: int | None
    message: str | None
    pid: int | None
    host: str | None
    runbook_path: str | None = None
    inventory: str | None = None
    variables: dict | None = None
    started_by: str | None = None
    runbook_hash: str | None = None
    retry_of: str | None = None  # the run that --retry-failed retried
    options: dict | None = None  # what the run was asked: {"worker": ...}
    pid_start: str | None = None  # which process `pid` was (core/local.py process_identity): a reused PID is another

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "runbook": self.runbook,
            "runbook_path": self.runbook_path,
            "inventory": self.inventory,
            "started": self.started,
            "finished": self.finished,
            "duration": (self.finished - self.started) if self.finished else None,
            "status": self.status,
            "exit_code": self.exit_code,
            "message": self.message,
            "variables": self.variables,
            "host": self.host,
            "pid": self.pid,
            "started_by": self.started_by,
            "runbook_hash": self.runbook_hash,
            "retry_of": self.retry_of,
        }


class History:
    """The history database. One instance per process; thread-safe."""

    def __init__(self, home: Path | None = None):
        self.home = home or state_home()
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = self.home / "history.db"
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA busy_timeout = 30000")
        # Switching to WAL takes a lock SQLite's busy handler does not wait for:
        # two processes opening a new history at once must retry (at most 100 x 0.1 s).
        retry(self._create, attempts=100, delay=0.1, backoff=1.0, retry_if=_locked)
        self._db.execute("PRAGMA synchronous = NORMAL")
        try:
            self.path.chmod(0o600)
        except OSError:
            pass

    def _create(self) -> None:
        self._db.execute("PRAGMA journal_mode = WAL")
        with self._lock:
            self._db.executescript(SCHEMA)
            self._migrate()

    def _migrate(self) -> None:
        """Bring an older history up to SCHEMA, once, whichever process gets there first."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            have = {r[1] for r in db.execute("PRAGMA table_info(runs)")}
            for name in ADDED_RUN_COLUMNS:
                if name not in have:
                    db.execute(f"ALTER TABLE runs ADD COLUMN {name} TEXT")
            if "attempt" not in {r[1] for r in db.execute("PRAGMA table_info(steps)")}:
                # The primary key changes: SQLite rebuilds the table for that.
                db.execute("ALTER TABLE steps RENAME TO steps_before_attempts")
                db.execute(STEPS_TABLE)
                db.execute(f"INSERT INTO steps ({STEP_COLUMNS}) SELECT {STEP_COLUMNS} FROM steps_before_attempts")
                db.execute("DROP TABLE steps_before_attempts")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _exec(self, sql: str, args=()) -> list:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def run_dir(self, run_id: str) -> Path:
        return self.home / "runs" / run_id

    def ask_cancel(self, run_id: str, who: str) -> None:
        """Say who asks a run of another process to stop, before it is signalled (cancelled_by reads it)."""
        path = self.run_dir(run_id) / "cancel"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(who[:200] + "\n")

    def cancelled_by(self, run_id: str) -> str | None:
        """Who asked run_id to stop from outside its process (ask_cancel), if anyone did."""
        try:
            return (self.run_dir(run_id) / "cancel").read_text().strip() or None
        except OSError:
            return None

    def log_path(self, run_id: str) -> Path:
        return self.run_dir(run_id) / "output.log"

    def artifact_dir(self, run_id: str) -> Path:
        return self.run_dir(run_id) / "artifacts"

    # -- writing --------------------------------------------------------------

    def start_run(
        self, run_id: str, runbook: str, *, runbook_path: str, inventory: str, variables: dict, started_by: str | None = None,
        runbook_hash: str | None = None, retry_of: str | None = None, options: dict | None = None,
    ) -> None:  # fmt: skip
        """`started_by`: who asked (the server's token name); default: the local user."""
        self.run_dir(run_id).mkdir(parents=True, exist_ok=True, mode=0o700)
        self._exec(
            "INSERT INTO runs (id, runbook, runbook_path, inventory, started, status, pid, host, variables, started_by, runbook_hash, retry_of, options, pid_start)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (run_id, runbook, runbook_path, inventory, time.time(), "running", os.getpid(), socket.gethostname(), json.dumps(variables),
             started_by or _local_user(), runbook_hash, retry_of, json.dumps(options or {}), process_identity(os.getpid())),
        )  # fmt: skip

    def finish_run(self, run_id: str, status: str, exit_code: int, message: str | None) -> None:
        self._exec(
            "UPDATE runs SET finished=?, status=?, exit_code=?, message=? WHERE id=?",
            (time.time(), status, exit_code, message, run_id),
        )

    def start_step(self, run_id: str, seq: int, step: str, worker: str, *, attempt: int = 1, attempts: int = 1) -> None:
        """One attempt of a step on a worker begins; earlier attempts keep their rows."""
        self._exec(
            "INSERT OR REPLACE INTO steps (run_id, seq, step, worker, status, started, attempt, attempts) VALUES (?,?,?,?,?,?,?,?)",
            (run_id, seq, step, worker, "running", time.time(), attempt, attempts),
        )

    def finish_step(
        self, run_id: str, step: str, worker: str, *, status: str, exit_code: int | None, message: str | None, outputs: dict, attempt: int = 1
    ) -> None:
        self._exec(
            "UPDATE steps SET status=?, exit_code=?, finished=?, message=?, outputs=? WHERE run_id=? AND step=? AND worker=? AND attempt=?",
            (status, exit_code, time.time(), message, json.dumps(outputs), run_id, step, worker, attempt),
        )

    def note_step(self, run_id: str, seq: int, step: str, worker: str, *, status: str, message: str | None, outputs: dict, carried_from: str | None = None) -> None:
        """A step that did not run here: skipped (with the reason), or carried over from `carried_from`."""
        now = time.time()
        self._exec(
            "INSERT OR REPLACE INTO steps (run_id, seq, step, worker, status, started, finished, message, outputs, carried_from) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (run_id, seq, step, worker, status, now, now, message, json.dumps(outputs), carried_from),
        )

    def add_artifact(self, run_id: str, step: str, worker: str, name: str, path: Path, size: int) -> None:
        self._exec(
            "INSERT INTO artifacts (run_id, step, worker, name, path, size) VALUES (?,?,?,?,?,?)",
            (run_id, step, worker, name, str(path), size),
        )

    # -- reading --------------------------------------------------------------

    def _record(self, row) -> RunRecord:
        rec = RunRecord(
            id=row[0], runbook=row[1], runbook_path=row[2], inventory=row[3], started=row[4], finished=row[5],
            status=row[6], exit_code=row[7], message=row[8], pid=row[9], host=row[10],
            variables=json.loads(row[11]) if row[11] else None, started_by=row[12], runbook_hash=row[13], retry_of=row[14],
            options=json.loads(row[15]) if row[15] else None, pid_start=row[16],
        )  # fmt: skip
        if rec.status == "running" and rec.host == socket.gethostname() and rec.pid and not self._still_there(rec):
            rec = RunRecord(**{**rec.__dict__, "status": "interrupted"})
        return rec

    @staticmethod
    def _still_there(rec: RunRecord) -> bool:
        """The run's process is alive, and (when recorded) it is the same process, not a later one with its PID."""
        return pid_alive(rec.pid) and (rec.pid_start is None or process_identity(rec.pid) == rec.pid_start)

    def runs(self, limit: int = 20, *, offset: int = 0, status: str | None = None, runbook: str | None = None) -> list[RunRecord]:
        """Newest first; `status` and `runbook` filter (an "interrupted" run is stored as "running")."""
        where, args = self._filters(status, runbook)
        rows = self._exec(
            f"SELECT {RUN_COLUMNS} FROM runs{where} ORDER BY started DESC LIMIT ? OFFSET ?",
            (*args, limit, offset),
        )
        records = [self._record(r) for r in rows]
        return [r for r in records if status is None or r.status == status]

    def count(self, *, status: str | None = None, runbook: str | None = None) -> int:
        where, args = self._filters(status, runbook)
        return self._exec(f"SELECT count(*) FROM runs{where}", args)[0][0]

    @staticmethod
    def _filters(status: str | None, runbook: str | None) -> tuple[str, tuple]:
        clauses, args = [], []
        if status is not None:
            clauses.append("status = ?")
            args.append("running" if status == "interrupted" else status)
        if runbook is not None:
            clauses.append("runbook = ?")
            args.append(runbook)
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), tuple(args)

    def run(self, run_id: str) -> RunRecord | None:
        rows = self._exec(f"SELECT {RUN_COLUMNS} FROM runs WHERE id=?", (run_id,))
        return self._record(rows[0]) if rows else None

    def lookup(self, run_id: str, *, field: str | None = None) -> RunRecord:
        """The run with this id, or the one run whose id starts with it; InputError (exit 2) if none or several."""
        ids = self.find(run_id)
        if not ids:
            raise InputError(f"no run {run_id!r} in the history", field=field, hint="see sshexec runs")
        if len(ids) > 1 and run_id not in ids:
            raise InputError(f"{run_id!r} matches {len(ids)} runs", field=field, hint="give more of the run id")
        return self.run(run_id if run_id in ids else ids[0])

    def find(self, prefix: str) -> list[str]:
        return [r[0] for r in self._exec("SELECT id FROM runs WHERE id LIKE ? ESCAPE '\\' ORDER BY started DESC", (_like(prefix) + "%",))]

    def steps(self, run_id: str) -> list[dict]:
        """Every row of a run: each attempt of each step on each worker, by step, then attempt, then worker."""
        rows = self._exec(
            "SELECT seq, step, worker, status, exit_code, started, finished, message, outputs, attempt, attempts, carried_from"
            " FROM steps WHERE run_id=? ORDER BY seq, attempt, worker",
            (run_id,),
        )
        return [
            {
                "seq": r[0], "step": r[1], "worker": r[2], "status": r[3], "exit_code": r[4],
                "started": r[5], "finished": r[6], "duration": (r[6] - r[5]) if r[6] and r[5] else None,
                "message": r[7], "outputs": json.loads(r[8]) if r[8] else {},
                "attempt": r[9], "attempts": r[10], "carried_from": r[11],
            }  # fmt: skip
            for r in rows
        ]

    def artifacts(self, run_id: str) -> list[dict]:
        rows = self._exec("SELECT step, worker, name, path, size FROM artifacts WHERE run_id=? ORDER BY rowid", (run_id,))
        return [{"step": r[0], "worker": r[1], "name": r[2], "path": r[3], "size": r[4]} for r in rows]


def _local_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def _locked(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")

