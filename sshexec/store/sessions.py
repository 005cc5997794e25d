"""The server's browser sessions, in the history's database: any server sharing it knows them.

A session is a random id (the cookie), the SHA-256 of the token that logged
in, a CSRF value and an expiry. Only the SHA-256 of the id is stored: someone
who can read the database cannot take over a session from it. Expired
sessions are deleted as new ones open.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import delete, insert, select

from .db import Database
from .schema import sessions


@dataclass(frozen=True)
class Session:
    token_digest: str
    csrf: str
    expires: float


def _key(sid: str) -> str:
    return hashlib.sha256(sid.encode("utf-8", "surrogateescape")).hexdigest()


class SessionStore:
    def __init__(self, where: Database | str | Path | None = None):
        self.db = Database.of(where).ready()

    def open(self, token_digest: str, ttl: float) -> tuple[str, Session]:
        """A new session for the token: (its id, for the cookie; the session)."""
        sid = secrets.token_urlsafe(32)
        session = Session(token_digest, secrets.token_urlsafe(32), time.time() + ttl)
        s = sessions.c
        with self.db.write() as c:
            c.execute(delete(sessions).where(s.expires < time.time()))
            c.execute(insert(sessions).values(id_sha256=_key(sid), token_sha256=token_digest, csrf=session.csrf, expires=session.expires))
        return sid, session

    def get(self, sid: str | None) -> Session | None:
        """The session of this cookie, if it exists and has not expired."""
        if not sid:
            return None
        s = sessions.c
        with self.db.read() as c:
            row = c.execute(select(s.token_sha256, s.csrf, s.expires).where(s.id_sha256 == _key(sid))).first()
        if row is None or row[2] < time.time():
            return None
        return Session(*row)

    def close(self, sid: str | None) -> None:
        if sid:
            with self.db.write() as c:
                c.execute(delete(sessions).where(sessions.c.id_sha256 == _key(sid)))
