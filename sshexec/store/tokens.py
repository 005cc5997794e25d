"""API tokens for `sshexec serve`: created, listed and revoked by `sshexec token`, checked by the server.

    $SSHEXEC_HOME/tokens.json     mode 0600: name, role, created, sha256 of the token

A token is 32 random bytes (`sx_` + URL-safe base64) shown once, at creation;
only its SHA-256 is stored. A salted slow hash would add nothing: the token is
random, not a password a person chose, so its hash cannot be guessed backwards.

Roles, each with the rights of those before it:

    viewer     reads runs, logs, artifacts, workers and runbooks
    operator   also starts and cancels runs started by the server, refreshes the workers' health
    admin      also cancels runs started from the command line on this host (signals their process)
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from ..core.local import state_home
from ..errors import InputError

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
    """The tokens file. Readers reload it when it changed, so a revoke takes effect at once."""

    def __init__(self, home: Path | None = None):
        self.home = home or state_home()
        self.path = self.home / "tokens.json"
        self._cache: tuple[tuple[int, int, int] | None, list[dict]] = (None, [])

    # -- reading -------------------------------------------------------------------------

    def _entries(self) -> list[dict]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return []
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)  # a rewrite is a new file (os.replace)
        if self._cache[0] != stamp:
            self._cache = (stamp, json.loads(self.path.read_text()).get("tokens", []))
        return self._cache[1]

    def list(self) -> list[TokenInfo]:
        return [TokenInfo(e["name"], e["role"], e["created"]) for e in self._entries()]

    def verify(self, token: str | None) -> TokenInfo | None:
        """The token's name and role, or None if it is not (or no longer) valid."""
        if not token or not token.startswith(PREFIX):
            return None
        return self.by_digest(digest(token))

    def by_digest(self, sha256: str) -> TokenInfo | None:
        """The token whose SHA-256 is `sha256` (a session keeps only that), if it still exists."""
        found = None
        for e in self._entries():
            if hmac.compare_digest(e["sha256"], sha256):
                found = TokenInfo(e["name"], e["role"], e["created"])
        return found

    # -- writing -------------------------------------------------------------------------

    def create(self, name: str, role: str) -> str:
        """A new token for `name` with `role`; the token is returned once and never stored."""
        if not NAME.fullmatch(name or ""):
            raise InputError(f"bad token name {name!r}: letters, digits and _ . @ -, at most 64")
        if role not in ROLES:
            raise InputError(f"--role must be one of {', '.join(ROLES)}, not {role!r}")
        token = PREFIX + secrets.token_urlsafe(32)
        with self._locked() as entries:
            if any(e["name"] == name for e in entries):
                raise InputError(f"a token named {name!r} exists already", hint=f"sshexec token revoke {name}, then create it again")
            entries.append({"name": name, "role": role, "created": time.time(), "sha256": digest(token)})
        return token

    def revoke(self, name: str) -> None:
        with self._locked() as entries:
            kept = [e for e in entries if e["name"] != name]
            if len(kept) == len(entries):
                raise InputError(f"no token named {name!r}", hint="see sshexec token list")
            entries[:] = kept

    @contextmanager
    def _locked(self):
        """The entries, to change in place; written back atomically (mode 0600) under a lock."""
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.home / "tokens.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            entries = [dict(e) for e in self._entries()]
            yield entries
            # mkstemp creates the file 0600, so the hashes are never readable by others, even briefly.
            tmp_fd, tmp = tempfile.mkstemp(prefix=".tokens-", dir=self.home)
            try:
                with os.fdopen(tmp_fd, "w") as fh:
                    json.dump({"tokens": entries}, fh, indent=1)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        finally:
            os.close(fd)
