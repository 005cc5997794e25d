"""Run history: runs, steps, their masked logs and artifacts, in the database (store/db.py).

A run is recorded when it starts, so a crash still leaves a record (status
"running" with a PID that is gone, or that another process took since, shows
as "interrupted"). Several sshexec
processes, on one machine or several, may write at once. Only masked text is
stored: the log comes through the output pipeline's masker, variables and
outputs are masked before they get here.

    History(None)            the default database ($SSHEXEC_DB, else $SSHEXEC_HOME/history.db)
    History("postgresql://sshexec@db:5432/sshexec")
    History(Path(home))      home/history.db, as the history always was
    History(database)        a store.db.Database shared with the tokens and sessions
"""

from __future__ import annotations

import getpass
import logging
import json
import os
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import bindparam, delete, func, insert, select, update

from ..core.local import pid_alive, process_identity
from ..core.status import check_run_status
from ..errors import DatabaseError, InputError
from .db import Database
from .logs import LogWriter, read_log
from .schema import artifacts, log_chunks, runs, steps


class Fenced(Exception):
    """A node writes for a run it no longer holds: another node found it lost (store/cluster.py)."""

FINISH_WAIT = 120.0  # seconds a run's end keeps trying while the database is away (as the log's close does)

log = logging.getLogger("sshexec")

RUN_COLUMNS = (
    runs.c.id, runs.c.runbook, runs.c.runbook_path, runs.c.inventory, runs.c.started, runs.c.finished, runs.c.status,
    runs.c.exit_code, runs.c.message, runs.c.pid, runs.c.host, runs.c.variables, runs.c.started_by, runs.c.runbook_hash,
    runs.c.retry_of, runs.c.options, runs.c.pid_start, runs.c.node,
)  # fmt: skip


# The writes of every run, built once: per call only the values travel (a statement built anew each time
# costs ≈ 3× its execution here: 0.32 against 0.09 ms for a step's end; more right after a container,
# with the caches cold). `k_*` name the row; the others are the columns' new values.
def _step_row(t):
    return (t.c.run_id == bindparam("k_run")) & (t.c.step == bindparam("k_step")) & (t.c.worker == bindparam("k_worker")) & (t.c.attempt == bindparam("k_attempt"))


_END = {c: bindparam(c) for c in ("finished", "status", "exit_code", "message")}
_RUN_INSERT = insert(runs)
_RUN_END = update(runs).where(runs.c.id == bindparam("k_id")).values(_END)
_RUN_END_CLAIMED = (
    update(runs)
    .where((runs.c.id == bindparam("k_id")) & (runs.c.node == bindparam("k_node")) & (runs.c.epoch == bindparam("k_epoch")) & (runs.c.status == "running"))
    .values(_END)
)
_STEP_END = update(steps).where(_step_row(steps)).values({c: bindparam(c) for c in ("status", "exit_code", "finished", "message", "outputs", "image_digest", "bundle_hash")})
_STEP_DELETE = delete(steps).where(_step_row(steps))
_STEP_INSERT = insert(steps)


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
    node: str | None = None  # the server node that claimed it from the queue; None: a command-line run

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
            "node": self.node,
        }


class History:
    """The run history. One instance per process is enough; thread-safe (the engine keeps a pool)."""

    def __init__(self, where: Database | str | Path | None = None):
        self.db = Database.of(where).ready()

    @property
    def url(self) -> str:
        """The database, as people may see it (never with a password)."""
        return self.db.url

    def close(self) -> None:
        self.db.close()

    # -- writing --------------------------------------------------------------

    def start_run(
        self, run_id: str, runbook: str, *, runbook_path: str, inventory: str, variables: dict, started_by: str | None = None,
        runbook_hash: str | None = None, retry_of: str | None = None, options: dict | None = None, claim: tuple[str, int] | None = None,
    ) -> None:  # fmt: skip
        """`started_by`: who asked (the server's token name); default: the local user.

        `claim` (node, epoch): a queued run that node claimed (store/cluster.py); its row becomes
        this one, and Fenced is raised if the claim is no longer the node's."""
        values = dict(
            runbook=runbook, runbook_path=runbook_path, inventory=inventory, started=time.time(), status="running",
            pid=os.getpid(), host=socket.gethostname(), variables=json.dumps(variables), runbook_hash=runbook_hash,
            retry_of=retry_of, options=json.dumps(options or {}), pid_start=process_identity(os.getpid()),
        )  # fmt: skip
        with self.db.write() as c:
            if claim is None:
                c.execute(_RUN_INSERT, {"id": run_id, "started_by": started_by or _local_user(), **values})
                return
            held = (runs.c.id == run_id) & (runs.c.status == "queued") & (runs.c.node == claim[0]) & (runs.c.epoch == claim[1])
            if c.execute(update(runs).where(held).values(**values)).rowcount != 1:
                raise Fenced(f"run {run_id} is no longer claimed by node {claim[0]} (epoch {claim[1]})")

    def ask_cancel(self, run_id: str, who: str) -> None:
        """Say who asks a run of another process to stop, before it is signalled (cancelled_by reads it)."""
        with self.db.write() as c:
            c.execute(update(runs).where(runs.c.id == run_id).values(cancel_asked_by=who[:200]))

    def cancelled_by(self, run_id: str) -> str | None:
        """Who asked run_id to stop from outside its process (ask_cancel), if anyone did."""
        with self.db.read() as c:
            return c.execute(select(runs.c.cancel_asked_by).where(runs.c.id == run_id)).scalar() or None

    def finish_run(
        self, run_id: str, status: str, exit_code: int, message: str | None, *, claim: tuple[str, int] | None = None, wait: float = FINISH_WAIT,
    ) -> bool:  # fmt: skip
        """Record the run's end; False if `claim` (node, epoch) no longer holds it: another node found this one
        lost and marked the run interrupted (store/cluster.py), which stays as it is.

        A database that does not answer is tried again for `wait` seconds (a restart, a failover): a run
        left "running" in a shared history would look alive for as long as its process lives."""
        end = {"k_id": run_id, "finished": time.time(), "status": status, "exit_code": exit_code, "message": message}
        if claim is not None:
            end.update(k_node=claim[0], k_epoch=claim[1])

        def write() -> int:
            with self.db.write() as c:
                return c.execute(_RUN_END if claim is None else _RUN_END_CLAIMED, end).rowcount

        done = self._patiently(write, f"run {run_id}: its end ({status})", wait)
        return claim is None or done == 1

    def _patiently(self, write, what: str, wait: float = FINISH_WAIT):
        """write(), tried again while the database does not answer, for `wait` seconds; then its DatabaseError."""
        deadline, pause = time.monotonic() + wait, 0.2
        while True:
            try:
                return write()
            except DatabaseError as exc:
                if time.monotonic() + pause > deadline:
                    raise
                if pause == 0.2:
                    log.warning("%s waits for the database: %s", what, exc.message)
                time.sleep(pause)
                pause = min(pause * 2, 2.0)

    def start_step(self, run_id: str, seq: int, step: str, worker: str, *, attempt: int = 1, attempts: int = 1) -> None:
        """One attempt of a step on a worker begins; earlier attempts keep their rows."""
        self._put_step(run_id, step, worker, attempt, seq=seq, status="running", started=time.time(), attempts=attempts)

    def finish_step(
        self, run_id: str, step: str, worker: str, *, status: str, exit_code: int | None, message: str | None, outputs: dict, attempt: int = 1,
        image_digest: str | None = None, bundle_hash: str | None = None,
    ) -> None:  # fmt: skip
        """`image_digest`: the image that ran (repository@sha256:...); `bundle_hash`: what its bundle held (issue 21)."""
        values = dict(
            k_run=run_id, k_step=step, k_worker=worker, k_attempt=attempt, status=status, exit_code=exit_code, finished=time.time(), message=message,
            outputs=json.dumps(outputs), image_digest=image_digest, bundle_hash=bundle_hash,
        )  # fmt: skip

        def write() -> None:
            with self.db.write() as c:
                c.execute(_STEP_END, values)

        self._patiently(write, f"run {run_id}: the end of step {step} on {worker}")

    def note_step(self, run_id: str, seq: int, step: str, worker: str, *, status: str, message: str | None, outputs: dict, carried_from: str | None = None) -> None:
        """A step that did not run here: skipped (with the reason), or carried over from `carried_from`."""
        now = time.time()
        self._put_step(run_id, step, worker, 1, seq=seq, status=status, started=now, finished=now, message=message, outputs=json.dumps(outputs), carried_from=carried_from)

    def _put_step(self, run_id: str, step: str, worker: str, attempt: int, **values) -> None:
        """The row of this attempt, written anew (as INSERT OR REPLACE did, on either engine)."""
        key = {"k_run": run_id, "k_step": step, "k_worker": worker, "k_attempt": attempt}
        row = {"run_id": run_id, "step": step, "worker": worker, "attempt": attempt, **values}

        def write() -> None:
            with self.db.write() as c:
                c.execute(_STEP_DELETE, key)
                c.execute(_STEP_INSERT, row)

        self._patiently(write, f"run {run_id}: step {step} on {worker}")

    def log_writer(self, run_id: str, **kw) -> LogWriter:
        """Where the Runner writes the run's masked log: at memory speed; stored in batches (store/logs.py)."""
        return LogWriter(self.db, run_id, **kw)

    # -- reading --------------------------------------------------------------

    def _record(self, row) -> RunRecord:
        rec = RunRecord(
            id=row[0], runbook=row[1], runbook_path=row[2], inventory=row[3], started=row[4], finished=row[5],
            status=row[6], exit_code=row[7], message=row[8], pid=row[9], host=row[10],
            variables=json.loads(row[11]) if row[11] else None, started_by=row[12], runbook_hash=row[13], retry_of=row[14],
            options=json.loads(row[15]) if row[15] else None, pid_start=row[16], node=row[17],
        )  # fmt: skip
        if rec.status in ("running", "waiting") and rec.host == socket.gethostname() and rec.pid and not self._still_there(rec):
            rec = RunRecord(**{**rec.__dict__, "status": "interrupted"})
        return rec

    @staticmethod
    def _still_there(rec: RunRecord) -> bool:
        """The run's process is alive, and (when recorded) it is the same process, not a later one with its PID."""
        return pid_alive(rec.pid) and (rec.pid_start is None or process_identity(rec.pid) == rec.pid_start)

    def runs(self, limit: int = 20, *, offset: int = 0, status: str | None = None, runbook: str | None = None) -> list[RunRecord]:
        """Newest first; `status` and `runbook` filter (an "interrupted" run is stored as "running").
        A status that is none of core/status.py's RUN_STATUSES is an InputError naming them."""
        query = self._filters(select(*RUN_COLUMNS), status, runbook).order_by(runs.c.started.desc()).limit(limit).offset(offset)
        with self.db.read() as c:
            rows = c.execute(query).all()
        records = [self._record(r) for r in rows]
        return [r for r in records if status is None or r.status == status]

    def count(self, *, status: str | None = None, runbook: str | None = None) -> int:
        with self.db.read() as c:
            return c.execute(self._filters(select(func.count()).select_from(runs), status, runbook)).scalar_one()

    @staticmethod
    def _filters(query, status: str | None, runbook: str | None):
        if check_run_status(status) == "interrupted":
            # Stored so when a node was lost; a dead process's run is stored running (or waiting: it died during an approval).
            query = query.where(runs.c.status.in_(("running", "waiting", "interrupted")))
        elif status is not None:
            query = query.where(runs.c.status == status)
        if runbook is not None:
            query = query.where(runs.c.runbook == runbook)
        return query

    def run(self, run_id: str) -> RunRecord | None:
        with self.db.read() as c:
            row = c.execute(select(*RUN_COLUMNS).where(runs.c.id == run_id)).first()
        return self._record(row) if row else None

    def lookup(self, run_id: str, *, field: str | None = None) -> RunRecord:
        """The run with this id, or the one run whose id starts with it; InputError (exit 2) if none or several."""
        ids = self.find(run_id)
        if not ids:
            raise InputError(f"no run {run_id!r} in the history", field=field, hint="see sshexec runs")
        if len(ids) > 1 and run_id not in ids:
            raise InputError(f"{run_id!r} matches {len(ids)} runs", field=field, hint="give more of the run id")
        return self.run(run_id if run_id in ids else ids[0])

    def find(self, prefix: str) -> list[str]:
        with self.db.read() as c:
            return list(c.execute(select(runs.c.id).where(runs.c.id.startswith(prefix, autoescape=True)).order_by(runs.c.started.desc())).scalars())

    def steps(self, run_id: str) -> list[dict]:
        """Every row of a run: each attempt of each step on each worker, by step, then attempt, then worker."""
        s = steps.c
        query = (
            select(s.seq, s.step, s.worker, s.status, s.exit_code, s.started, s.finished, s.message, s.outputs, s.attempt, s.attempts, s.carried_from,
                   s.image_digest, s.bundle_hash)
            .where(s.run_id == run_id).order_by(s.seq, s.attempt, s.worker)
        )  # fmt: skip
        with self.db.read() as c:
            rows = c.execute(query).all()
        return [
            {
                "seq": r[0], "step": r[1], "worker": r[2], "status": r[3], "exit_code": r[4],
                "started": r[5], "finished": r[6], "duration": (r[6] - r[5]) if r[6] and r[5] else None,
                "message": r[7], "outputs": json.loads(r[8]) if r[8] else {},
                "attempt": r[9], "attempts": r[10], "carried_from": r[11], "image_digest": r[12], "bundle_hash": r[13],
            }  # fmt: skip
            for r in rows
        ]

    def artifacts(self, run_id: str) -> list[dict]:
        """The files the run's steps collected: step, worker, name, size, and whether their bytes are stored."""
        a = artifacts.c
        with self.db.read() as c:
            rows = c.execute(select(a.step, a.worker, a.name, a.size, a.chunks).where(a.run_id == run_id).order_by(a.step, a.worker, a.name)).all()
        return [{"step": r[0], "worker": r[1], "name": r[2], "size": r[3], "stored": r[4] is not None} for r in rows]

    def read_log(self, run_id: str, start: int = 0, limit: int = 1 << 20) -> bytes:
        """The run's log from byte `start` on: about `limit` bytes at most (whole stored chunks), b"" past its end."""
        return read_log(self.db, run_id, start, limit)

    def log_text(self, run_id: str) -> bytes:
        """The run's whole log, as stored so far."""
        with self.db.read() as c:
            return b"".join(c.execute(select(log_chunks.c.data).where(log_chunks.c.run_id == run_id).order_by(log_chunks.c.pos)).scalars())


def _local_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"
