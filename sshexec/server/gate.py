"""Who is asking, found before anything reads the request's body.

AuthFirst authenticates /api requests from their headers alone (a bearer
token, or a session with its CSRF token): a stranger's request is answered
401 without a byte of its body read. Inside it (app.py), Starlette's
RequestBodyLimitMiddleware caps every body (`serve --max-body`, default
1 MiB; 413 past it, or at once for a larger Content-Length), so an anonymous
request gets 401 whatever it sends, and a logged-in one cannot make the
server buffer more than the cap either.
"""

from __future__ import annotations

import anyio
from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from .auth import not_logged_in

def _api(path: str) -> bool:
    return path == "/api" or path.startswith("/api/")


class AuthFirst:
    """ASGI middleware: the caller of an /api request, from its headers; the Principal goes to `request.state`."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _api(scope["path"]):
            return await self.app(scope, receive, send)
        request = Request(scope)  # no receive: nothing here can read the body
        auth = scope["app"].state.auth
        try:
            # The token store reads a file: off the event loop.
            who = await anyio.to_thread.run_sync(auth.principal, request)
            if who is None:
                raise not_logged_in()
        except HTTPException as exc:
            response = JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
            return await response(scope, receive, send)
        scope.setdefault("state", {})["principal"] = who
        await self.app(scope, receive, send)
