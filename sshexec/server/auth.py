"""Who is asking, and may they: bearer tokens, browser sessions, CSRF, and the brake on failed logins.

- The API takes `Authorization: Bearer TOKEN` (tokens: sshexec/store/tokens.py).
- The login page exchanges a token for a session: a random id in an HttpOnly,
  SameSite=Strict cookie (Secure under TLS). Sessions live in the history's
  database (store/sessions.py, only the SHA-256 of the id): every server that
  shares it knows them, a restart logs nobody out, and a revoked token ends
  its sessions at once.
- A request authenticated by the cookie and changing anything (POST) must
  carry the session's CSRF token (`X-CSRF-Token` header, or a `csrf` form
  field) and, when the browser sends one, an Origin of this server. A bearer
  token is never sent by a browser on its own, so it needs neither.
- Failed logins go into the audit trail (store/audit.py) with the client's
  address, never the token tried; those the brake answers 429 are not written.
- Failed logins (a bad token at the login form or in a bearer header) are
  counted per client address, by each server in its own memory (unlike the
  sessions: the brake only slows failures, so a restart that forgets it, or
  another server that never knew it, costs nothing): past `LIMIT` within `WINDOW` seconds, that
  address's failures get 429 until the window has passed. A valid token or
  session always passes, braked address or not: behind a reverse proxy many
  people share an address, and a stranger's five bad guesses must not lock
  them out (the tokens' 256 random bits, not the brake, are what stop
  guessing). The client address is the peer's, or the one a trusted proxy
  names (`serve --forwarded-allow-ips`, as uvicorn reads X-Forwarded-For).
  At most `ADDRESSES` addresses are remembered, each for `WINDOW` seconds.
"""

from __future__ import annotations

import hmac
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from cachetools import TTLCache
from fastapi import HTTPException, Request

from ..store.sessions import Session, SessionStore
from ..store.tokens import TokenInfo, TokenStore, digest

SESSION_COOKIE = "sshexec_session"
LOGIN_COOKIE = "sshexec_login"  # the login form's CSRF value, before there is a session
SESSION_TTL = 12 * 3600
LIMIT, WINDOW = 5, 60.0
ADDRESSES = 10_000  # addresses the brake remembers at once: the least recently failed are forgotten first
UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: its token's name and role, and how it came."""

    token: TokenInfo
    via: str  # "bearer" | "session"
    csrf: str | None = None
    key: str = field(default="", repr=False)  # what Auth.still_valid looks up again: the token's sha256, or the session id

    @property
    def name(self) -> str:
        return self.token.name

    def allows(self, role: str) -> bool:
        return self.token.allows(role)


class FailedLogins:
    """Failed attempts per client address in a sliding window, for at most `size` addresses. Thread-safe."""

    def __init__(self, limit: int = LIMIT, window: float = WINDOW, clock=time.monotonic, size: int = ADDRESSES):
        self.limit, self.window, self.clock = limit, window, clock
        # An address is forgotten `window` s after its last failure, or earlier when `size` others failed since.
        self._seen: TTLCache[str, deque] = TTLCache(maxsize=size, ttl=window, timer=clock)
        self._lock = threading.Lock()

    def _recent(self, client: str) -> deque:
        q = self._seen.get(client) or deque(maxlen=self.limit)
        now = self.clock()
        while q and q[0] <= now - self.window:
            q.popleft()
        return q

    def retry_after(self, client: str) -> int:
        """Seconds until `client`'s failures stop being braked (0: now)."""
        with self._lock:
            q = self._recent(client)
            if len(q) < self.limit:
                return 0
            return max(1, int(q[0] + self.window - self.clock()) + 1)

    def failed(self, client: str) -> None:
        with self._lock:
            q = self._recent(client)
            q.append(self.clock())
            self._seen[client] = q  # set again: its time to live starts anew

    def __len__(self) -> int:
        with self._lock:
            self._seen.expire()
            return len(self._seen)


class Auth:
    """The server's gatekeeper: tokens and sessions from the database."""

    def __init__(self, store: TokenStore, sessions: SessionStore, *, secure_cookies: bool = False, limiter: FailedLogins | None = None, audit=None):
        self.store = store
        self.audit = audit  # store/audit.py's AuditLog: failed logins are recorded there (never the token tried)
        self.sessions = sessions
        self.secure_cookies = secure_cookies
        self.limiter = limiter or FailedLogins()

    # -- tokens and sessions ----------------------------------------------------------------

    def check_token(self, token: str | None, client: str) -> TokenInfo:
        """The token's owner, or HTTPException: 401 if the token is bad, 429 instead while `client` is braked.

        A valid token always passes: the brake slows only failures.
        """
        info = self.store.verify(token)
        if info is not None:
            return info
        wait = self.limiter.retry_after(client)
        if wait:
            raise HTTPException(429, "too many failed logins from this address: wait and try again", headers={"Retry-After": str(wait)})
        self.limiter.failed(client)
        if self.audit is not None:
            # Only failures the brake let through are written: at most LIMIT per address and WINDOW, so
            # guessing cannot turn into a flood of writes (a braked one is answered 429 above, unrecorded).
            self.audit.try_record("login.failed", who="(unknown)", source=f"http {client}", detail={"reason": "token not valid"})
        raise HTTPException(401, "this token is not valid (revoked, or mistyped)", headers={"WWW-Authenticate": "Bearer"})

    def open_session(self, token: str) -> tuple[str, Session]:
        return self.sessions.open(digest(token), SESSION_TTL)

    def close_session(self, sid: str | None) -> None:
        self.sessions.close(sid)

    def session(self, sid: str | None) -> tuple[Session, TokenInfo] | None:
        session = self.sessions.get(sid)
        if session is None:
            return None
        # The token may have been revoked since the login: it is looked up again every time.
        info = self.store.by_digest(session.token_digest)
        if info is None:
            self.close_session(sid)
            return None
        return session, info

    def still_valid(self, who: Principal) -> bool:
        """Whether `who`'s token (or session) is still there: a long answer (a log stream) asks again as it goes."""
        if who.via == "session":
            return self.session(who.key) is not None
        return self.store.by_digest(who.key) is not None

    # -- per request ----------------------------------------------------------------------

    def principal(self, request: Request) -> Principal | None:
        """Who sent `request`: HTTPException for a bad bearer token or a forged POST; None if nobody logged in."""
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer":
                raise HTTPException(401, "use Authorization: Bearer TOKEN", headers={"WWW-Authenticate": "Bearer"})
            return Principal(self.check_token(token.strip(), client_of(request)), "bearer", key=digest(token.strip()))
        found = self.session(request.cookies.get(SESSION_COOKIE))
        if found is None:
            return None
        session, info = found
        if request.method in UNSAFE:
            check_same_origin(request)
            sent = request.headers.get("x-csrf-token") or ""
            if not hmac.compare_digest(sent.encode(), session.csrf.encode()):
                raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")
        return Principal(info, "session", session.csrf, key=request.cookies.get(SESSION_COOKIE, ""))


def check_same_origin(request: Request) -> None:
    """A browser's POST names the page it came from in Origin: it must be this server."""
    origin = request.headers.get("origin")
    if origin is None:
        return
    own = f"{request.url.scheme}://{request.headers.get('host', '')}"
    if origin != own:
        raise HTTPException(403, f"a request from {origin} may not change anything here")


def client_of(request: Request) -> str:
    """The client's address: the peer's, or the one a trusted proxy gave (uvicorn's proxy headers, app.serve)."""
    return request.client.host if request.client else "?"


def same_csrf(sent: str | None, expected: str | None) -> bool:
    return bool(sent) and bool(expected) and hmac.compare_digest(sent.encode(), expected.encode())


def not_logged_in() -> HTTPException:
    return HTTPException(
        401, "not logged in: send Authorization: Bearer TOKEN (see sshexec token create), or log in at /login",
        headers={"WWW-Authenticate": "Bearer"},
    )  # fmt: skip


def need(role: str):
    """A FastAPI dependency: the caller, who must be logged in with at least `role` (401 / 403 otherwise).

    Under /api the caller was found before the body was read (gate.py); it is taken from there.
    """

    def dependency(request: Request) -> Principal:
        p = getattr(request.state, "principal", None) or request.app.state.auth.principal(request)
        if p is None:
            raise not_logged_in()
        if not p.allows(role):
            raise HTTPException(403, f"token {p.name!r} has the role {p.token.role}; this needs {role}")
        return p

    dependency.__name__ = f"need_{role}"
    return dependency
