"""API tokens for `sshexec serve`: created, listed and revoked by `sshexec token`, checked by the server.

    table tokens (store/schema.py): name, role, created, sha256 of the token

They live in the history's database, so that every server sharing it knows
them, and a revoke takes effect everywhere at the next request (each request
looks its token up).

A token is 32 random bytes (`sx_` + URL-safe base64) shown once, at creation;
only its SHA-256 is stored. A salted slow hash would add nothing: the token is
random, not a password a person chose, so its hash cannot be guessed backwards.

Roles, each with the rights of those before it:

    viewer     reads runs, logs, artifacts, workers and runbooks
    operator   also starts and cancels runs started by the server, refreshes the workers' health
    admin      also cancels runs started from the command line on this host (signals their process)
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError

from ..errors import InputError
from .db import Database
from .schema import sessions, tokens

ROLES = ("viewer", "operator", "admin")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
PREFIX = "sx_"


@dataclass(frozen=True)
class TokenInfo:
    """A token as the store knows it: never the token itself."""

    name: str
    role: str
    created: float

    def allows(self, role: str) -> bool:
        """True if this token's role includes `role`'s rights."""
        return ROLES.index(self.role) >= ROLES.index(role)

    def to_dict(self) -> dict:
        return asdict(self)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


class TokenStore:
    """The tokens table. `where`: as History's (a Database, a URL, a home directory, or None)."""

    def __init__(self, where: Database | str | Path | None = None):
        self.db = Database.of(where).ready()

    # -- reading -------------------------------------------------------------------------

    def list(self) -> list[TokenInfo]:
        t = tokens.c
        with self.db.read() as c:
            rows = c.execute(select(t.name, t.role, t.created).order_by(t.created, t.name)).all()
        return [TokenInfo(*r) for r in rows]

    def verify(self, token: str | None) -> TokenInfo | None:
        """The token's name and role, or None if it is not (or no longer) valid."""
        if not token or not token.startswith(PREFIX):
            return None
        return self.by_digest(digest(token))

    def by_digest(self, sha256: str) -> TokenInfo | None:
        """The token whose SHA-256 is `sha256` (a session keeps only that), if it still exists.

        Looked up by the digest itself: a caller cannot choose the digest of a random token, so the
        lookup's timing tells nothing about the stored ones."""
        t = tokens.c
        with self.db.read() as c:
            row = c.execute(select(t.name, t.role, t.created).where(t.sha256 == sha256)).first()
        return TokenInfo(*row) if row else None

    # -- writing -------------------------------------------------------------------------

    def create(self, name: str, role: str) -> str:
        """A new token for `name` with `role`; the token is returned once and never stored."""
        if not NAME.fullmatch(name or ""):
            raise InputError(f"bad token name {name!r}: letters, digits and _ . @ -, at most 64")
        if role not in ROLES:
            raise InputError(f"--role must be one of {', '.join(ROLES)}, not {role!r}")
        token = PREFIX + secrets.token_urlsafe(32)
        try:
            with self.db.write() as c:
                c.execute(insert(tokens).values(name=name, role=role, created=time.time(), sha256=digest(token)))
        except IntegrityError:
            raise InputError(f"a token named {name!r} exists already", hint=f"sshexec token revoke {name}, then create it again") from None
        return token

    def revoke(self, name: str) -> None:
        """The token is gone, and so are its browser sessions, for every server at once."""
        t = tokens.c
        with self.db.write() as c:
            sha = c.execute(select(t.sha256).where(t.name == name)).scalar()
            if sha is None:
                raise InputError(f"no token named {name!r}", hint="see sshexec token list")
            c.execute(delete(tokens).where(t.name == name))
            c.execute(delete(sessions).where(sessions.c.token_sha256 == sha))
