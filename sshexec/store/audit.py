"""The audit trail: an append-only record of who did what, when and from where.

    table audit: id, at (Unix seconds), who, source (from where), action, target, detail (JSON)

Every server and command line that shares the database writes to it: a
trigger, a cancel, an approval's decision, a token created or revoked, a lock
broken, a gc, a failed login (and, with the cluster, a drain or a schedule
changed: ACTIONS names them, the caller is one line). Nothing in sshexec
changes or deletes an entry, `history prune` included.

No secret ever goes in: callers pass names (a runbook's, a token's, a
variable's), never values, and `record` masks the detail with the run's
masker when it has one. A failed login records the client's address, never
the token it tried.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import socket
import time
from dataclasses import asdict, dataclass

from sqlalchemy import Column, Float, Index, Integer, Table, Text, insert, select

from ..core.duration import parse_duration
from ..errors import InputError, SshexecError
from .db import Database
from .schema import metadata

log = logging.getLogger("sshexec")

audit = Table(
    "audit", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("who", Text, nullable=False),  # "token:NAME" (the server), or USER (the command line)
    Column("source", Text, nullable=False),  # "http 127.0.0.1" (the client's address), or "cli HOST pid N"
    Column("action", Text, nullable=False),
    Column("target", Text),  # the run, token, lock... acted on
    Column("detail", Text),  # JSON: names and counts, never a value of a secret
    Index("audit_at", "at"),
)  # fmt: skip

ACTIONS = (
    "run.trigger", "run.cancel", "run.approve", "run.reject", "token.create", "token.revoke", "lock.unlock", "gc",
    "login.failed", "notify.add", "notify.remove",
    # The cluster's (issue 20): its commands call AuditLog.record with these.
    "node.drain", "node.undrain", "schedule.add", "schedule.remove",
)  # fmt: skip


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: float
    who: str
    source: str
    action: str
    target: str | None
    detail: dict

    def to_dict(self) -> dict:
        return asdict(self)


def local_actor() -> tuple[str, str]:
    """(who, source) for an action taken on this machine's command line."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid {os.getuid()}"
    return user, f"cli {socket.gethostname()} pid {os.getpid()}"


def parse_since(text: str | None, now: float | None = None) -> float | None:
    """--since: a duration back from now (1h, 2d, 90m) or a date (2026-12-03, 2026-12-03T08:00, UTC); None for all."""
    if not text:
        return None
    now = time.time() if now is None else now
    try:
        return now - parse_duration(text, "--since")
    except ValueError:
        pass
    from datetime import datetime, timezone

    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise InputError(f"--since {text!r}: give a duration back from now (1h, 2d) or a date (2026-12-03, 2026-12-03T08:00, UTC)", field="--since") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


_INSERT = insert(audit)  # built once: per entry only the values travel (store/history.py)


class AuditLog:
    """The audit table. `where`: as History's (a Database, a URL, a home directory, or None)."""

    def __init__(self, where: Database | str | None = None):
        self.db = Database.of(where).ready()

    def record(self, action: str, *, who: str, source: str, target: str | None = None, detail: dict | None = None, masker=None) -> None:
        """Append one entry. `detail` holds names and counts; `masker` (core/secrets.py) hides any secret it knows of."""
        if action not in ACTIONS:
            raise ValueError(f"unknown audit action {action!r}")
        text = json.dumps(detail or {}, sort_keys=True, default=str)
        if masker is not None:
            text = masker.mask_text(text)
        with self.db.write() as c:
            c.execute(_INSERT, {"at": time.time(), "who": who[:200], "source": source[:200], "action": action, "target": (target or None) and target[:500], "detail": text})

    def try_record(self, action: str, **kw) -> None:
        """record(), but a database that cannot take it only costs a warning (a failed login must still get its 401)."""
        try:
            self.record(action, **kw)
        except SshexecError as exc:
            log.warning("audit: could not record %s: %s", action, exc.message)

    def entries(self, *, since: float | None = None, action: str | None = None, limit: int = 1000) -> list[AuditEntry]:
        """Oldest first, from `since` on (Unix seconds), at most `limit` (the newest of them)."""
        a = audit.c
        query = select(a.id, a.at, a.who, a.source, a.action, a.target, a.detail)
        if since is not None:
            query = query.where(a.at >= since)
        if action is not None:
            query = query.where(a.action == action)
        with self.db.read() as c:
            rows = c.execute(query.order_by(a.id.desc()).limit(limit)).all()
        return [AuditEntry(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6]) if r[6] else {}) for r in reversed(rows)]
