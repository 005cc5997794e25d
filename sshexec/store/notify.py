"""Notifications, as the database keeps them: where they go, what is to be sent, and every try.

    notify_endpoints    name, URL, events, the HMAC secret, how many tries and the first wait between them
    notify_deliveries   one per event and endpoint: the JSON body (masked: it is built from the history), its state
                        (pending, delivered, failed), its tries so far, when it is due, and a lease while one sends it
    notify_attempts     every try: when, the HTTP status or the error, how long it took

A run never sends anything: when it ends (or waits for an approval), `announce`
writes a delivery row per endpoint that wants the event, and returns. Senders
(ops/notify.py: every `sshexec serve`, and `sshexec run` for its own run, once)
claim due rows with a lease, so that two servers sharing the database never
send one twice at once, and a sender that died leaves them to another.

The endpoint's secret signs each body (X-Sshexec-Signature: sha256=HMAC): it
must be kept where senders can read it, so it is in this table, as the
database's password protects it. It is never shown (`notify list` says
whether one is set), logged, or put in a body or the audit trail.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field

from sqlalchemy import Column, Float, Index, Integer, PrimaryKeyConstraint, Table, Text, delete, func, insert, or_, select, update

from ..core.secrets import MIN_SECRET, Secret
from ..errors import InputError, SshexecError
from .db import Database
from .schema import metadata, runs

log = logging.getLogger("sshexec")

EVENTS = ("run.succeeded", "run.failed", "run.cancelled", "run.waiting")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
DEFAULT_ATTEMPTS, DEFAULT_BACKOFF = 5, 2.0
LEASE = 60.0  # seconds a sender holds a claimed delivery: longer than a try's timeout

endpoints = Table(
    "notify_endpoints", metadata,
    Column("name", Text, primary_key=True),
    Column("url", Text, nullable=False),
    Column("events", Text, nullable=False),  # JSON list
    Column("secret", Text, nullable=False),
    Column("max_attempts", Integer, nullable=False),
    Column("backoff", Float, nullable=False),  # seconds before the second try; each next wait doubles
    Column("created", Float, nullable=False),
    Column("origin", Text, nullable=False),  # "cli" (sshexec notify add) or "config" (serve --config)
)  # fmt: skip

deliveries = Table(
    "notify_deliveries", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("endpoint", Text, nullable=False),
    Column("event", Text, nullable=False),
    Column("run_id", Text),
    Column("body", Text, nullable=False),
    Column("created", Float, nullable=False),
    Column("state", Text, nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_at", Float, nullable=False),
    Column("claimed_until", Float),
    Column("last_error", Text),
    Index("notify_deliveries_due", "state", "next_at"),
)  # fmt: skip

attempts = Table(
    "notify_attempts", metadata,
    Column("delivery_id", Integer, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("at", Float, nullable=False),
    Column("status_code", Integer),
    Column("error", Text),
    Column("duration", Float),
    PrimaryKeyConstraint("delivery_id", "attempt"),
)  # fmt: skip


@dataclass(frozen=True)
class Endpoint:
    name: str
    url: str
    events: tuple[str, ...]
    secret: Secret = field(repr=False)
    max_attempts: int = DEFAULT_ATTEMPTS
    backoff: float = DEFAULT_BACKOFF
    origin: str = "cli"

    def to_dict(self) -> dict:
        """As people may see it: whether a secret is set, never the secret."""
        return {"name": self.name, "url": self.url, "events": list(self.events), "secret": "set", "max_attempts": self.max_attempts, "backoff": self.backoff, "origin": self.origin}


@dataclass(frozen=True)
class Due:
    """A delivery a sender claimed: what to send where, and which try this is."""

    id: int
    endpoint: Endpoint
    event: str
    body: str
    attempt: int


def check_endpoint(name: str, url: str, events, secret: str | None, *, max_attempts: int = DEFAULT_ATTEMPTS, backoff: float = DEFAULT_BACKOFF, where: str = "") -> Endpoint:
    """An Endpoint from what the person wrote; InputError naming the field otherwise."""
    from urllib.parse import urlsplit

    at = f"{where}." if where else ""
    if not NAME.fullmatch(name or ""):
        raise InputError(f"bad notification name {name!r}: letters, digits and _ . -, at most 64", field=f"{at}name")
    parts = urlsplit(url or "")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"notification {name}: url must be an http:// or https:// URL, not {url!r}", field=f"{at}url")
    if parts.password or parts.username:
        raise InputError(f"notification {name}: the url holds credentials; sign with the secret instead", field=f"{at}url")
    events = [events] if isinstance(events, str) else list(events or ())
    events = [e.strip() for ev in events for e in str(ev).split(",") if e.strip()]
    bad = [e for e in events if e not in EVENTS]
    if not events or bad:
        raise InputError(f"notification {name}: events must be some of {', '.join(EVENTS)}" + (f", not {', '.join(bad)}" if bad else ""), field=f"{at}events")
    if not secret or len(secret) < MIN_SECRET:
        raise InputError(f"notification {name}: a secret of at least {MIN_SECRET} characters signs each delivery", field=f"{at}secret")
    if not 1 <= int(max_attempts) <= 20 or not 0 <= float(backoff) <= 3600:
        raise InputError(f"notification {name}: attempts is 1 to 20, backoff 0 to 3600 seconds", field=f"{at}attempts")
    return Endpoint(name, url, tuple(dict.fromkeys(events)), Secret(secret), int(max_attempts), float(backoff))


class NotifyStore:
    """The notify_* tables. `where`: as History's."""

    def __init__(self, where: Database | str | None = None):
        self.db = Database.of(where).ready()

    # -- endpoints -----------------------------------------------------------------------

    def save(self, ep: Endpoint, *, origin: str = "cli") -> None:
        """Add `ep`, or replace the endpoint of that name."""
        values = dict(url=ep.url, events=json.dumps(list(ep.events)), secret=ep.secret.reveal(), max_attempts=ep.max_attempts, backoff=ep.backoff, created=time.time(), origin=origin)
        with self.db.write() as c:
            c.execute(delete(endpoints).where(endpoints.c.name == ep.name))
            c.execute(insert(endpoints).values(name=ep.name, **values))

    def remove(self, name: str) -> None:
        with self.db.write() as c:
            if not c.execute(delete(endpoints).where(endpoints.c.name == name)).rowcount:
                raise InputError(f"no notification named {name!r}", hint="see sshexec notify list")

    def endpoints(self) -> list[Endpoint]:
        e = endpoints.c
        with self.db.read() as c:
            rows = c.execute(select(e.name, e.url, e.events, e.secret, e.max_attempts, e.backoff, e.origin).order_by(e.name)).all()
        return [Endpoint(r[0], r[1], tuple(json.loads(r[2])), Secret(r[3]), r[4], r[5], r[6]) for r in rows]

    # -- deliveries ----------------------------------------------------------------------

    def wants(self, event: str) -> bool:
        """Whether any endpoint wants `event`: read only. Most runs end with none configured, and a write
        transaction (SQLite's write lock) for nothing is time on every run's way out."""
        with self.db.read() as c:
            return any(event in json.loads(events) for (events,) in c.execute(select(endpoints.c.events)).all())

    def enqueue(self, event: str, run_id: str | None, body: dict) -> list[int]:
        """A pending delivery of `body` to every endpoint that wants `event`; their ids."""
        text = json.dumps(body, sort_keys=True)
        now = time.time()
        ids = []
        with self.db.write() as c:
            for name, events in c.execute(select(endpoints.c.name, endpoints.c.events)).all():
                if event in json.loads(events):
                    res = c.execute(insert(deliveries).values(endpoint=name, event=event, run_id=run_id, body=text, created=now, state="pending", attempts=0, next_at=now))
                    ids.append(res.inserted_primary_key[0])
        return ids

    def claim(self, *, limit: int = 20, run_id: str | None = None, lease: float = LEASE) -> list[Due]:
        """Due pending deliveries, each leased to this caller (another sender skips it until the lease ends)."""
        d, e = deliveries.c, endpoints.c
        now = time.time()
        query = (
            select(d.id, d.event, d.body, d.attempts, e.name, e.url, e.events, e.secret, e.max_attempts, e.backoff, e.origin)
            .select_from(deliveries.join(endpoints, endpoints.c.name == d.endpoint))
            .where(d.state == "pending", d.next_at <= now, or_(d.claimed_until.is_(None), d.claimed_until < now))
            .order_by(d.next_at).limit(limit)
        )  # fmt: skip
        if run_id is not None:
            query = query.where(d.run_id == run_id)
        with self.db.read() as c:
            if c.execute(query.limit(1)).first() is None:
                return []  # nothing due: no write transaction (a run's own send, with no endpoint, lands here)
        out = []
        with self.db.write() as c:
            for r in c.execute(query).all():
                # The lease: only one sender's UPDATE finds the row still unclaimed (on PostgreSQL too).
                taken = c.execute(
                    update(deliveries).where(d.id == r[0], or_(d.claimed_until.is_(None), d.claimed_until < now)).values(claimed_until=now + lease)
                ).rowcount  # fmt: skip
                if taken:
                    ep = Endpoint(r[4], r[5], tuple(json.loads(r[6])), Secret(r[7]), r[8], r[9], r[10])
                    out.append(Due(r[0], ep, r[1], r[2], r[3] + 1))
        return out

    def tried(self, due: Due, *, status_code: int | None, error: str | None, duration: float) -> str:
        """Record a try of `due`; the delivery's state after it (delivered, pending with its next time, or failed)."""
        ok = status_code is not None and 200 <= status_code < 300
        state = "delivered" if ok else "failed" if due.attempt >= due.endpoint.max_attempts else "pending"
        wait = due.endpoint.backoff * (2 ** (due.attempt - 1))
        said = error or (None if ok else f"HTTP {status_code}")
        with self.db.write() as c:
            c.execute(insert(attempts).values(delivery_id=due.id, attempt=due.attempt, at=time.time(), status_code=status_code, error=said and said[:500], duration=duration))
            c.execute(
                update(deliveries).where(deliveries.c.id == due.id)
                .values(attempts=due.attempt, state=state, next_at=time.time() + wait, claimed_until=None, last_error=said and said[:500])
            )  # fmt: skip
        return state

    def log(self, *, run_id: str | None = None, limit: int = 100) -> list[dict]:
        """The newest deliveries (oldest first), each with its tries."""
        d, a = deliveries.c, attempts.c
        query = select(d.id, d.endpoint, d.event, d.run_id, d.created, d.state, d.attempts, d.next_at, d.last_error).order_by(d.id.desc()).limit(limit)
        if run_id is not None:
            query = query.where(d.run_id == run_id)
        with self.db.read() as c:
            rows = c.execute(query).all()
            ids = [r[0] for r in rows]
            tries = c.execute(select(a.delivery_id, a.attempt, a.at, a.status_code, a.error, a.duration).where(a.delivery_id.in_(ids)).order_by(a.delivery_id, a.attempt)).all() if ids else []
        by: dict[int, list[dict]] = {}
        for t in tries:
            by.setdefault(t[0], []).append({"attempt": t[1], "at": t[2], "status_code": t[3], "error": t[4], "duration": t[5]})
        keys = ("id", "endpoint", "event", "run_id", "created", "state", "attempts", "next_at", "last_error")
        return [{**dict(zip(keys, r)), "tries": by.get(r[0], [])} for r in reversed(rows)]


def failure_counts(db: Database) -> tuple[dict[str, int], int]:
    """({state: deliveries}, failed tries) for the metrics."""
    with db.read() as c:
        states = dict(c.execute(select(deliveries.c.state, func.count()).group_by(deliveries.c.state)).all())
        failed = c.execute(
            select(func.count()).select_from(attempts).where(or_(attempts.c.status_code.is_(None), attempts.c.status_code < 200, attempts.c.status_code >= 300))
        ).scalar_one()  # fmt: skip
    return states, failed


def event_of(status: str) -> str | None:
    """The notification event of a run's end: timed-out and error are failures too, and so is a run a survivor
    found interrupted when its server node was lost (store/cluster.py; a dead command line's run has nobody to say it)."""
    return {
        "succeeded": "run.succeeded", "failed": "run.failed", "timed-out": "run.failed", "error": "run.failed", "interrupted": "run.failed",
        "cancelled": "run.cancelled", "waiting": "run.waiting",
    }.get(status)  # fmt: skip


def announce(db: Database, run_id: str, status: str, **extra) -> bool:
    """Queue the event of run `run_id`'s new status for every endpoint that wants it; whether it queued
    any. Never sends; never raises.

    The body is built from the history's record (masked there already) and `extra` (an approval's message, step, role)."""
    event = event_of(status)
    if event is None:
        return False
    try:
        store = NotifyStore(db)
        if not store.wants(event):
            return False
        with db.read() as c:
            row = c.execute(select(runs.c.runbook, runs.c.status, runs.c.exit_code, runs.c.message, runs.c.started, runs.c.finished, runs.c.started_by, runs.c.host).where(runs.c.id == run_id)).first()
        if row is None:
            return False
        run = dict(zip(("runbook", "status", "exit_code", "message", "started", "finished", "started_by", "host"), row))
        body = {"event": event, "run_id": run_id, "run": {**run, "status": status}, "sent_at": time.time(), **extra}
        store.enqueue(event, run_id, body)
        return True
    except SshexecError as exc:
        log.warning("run %s: notifications of %s could not be queued: %s", run_id, event, exc.message)
        return False
