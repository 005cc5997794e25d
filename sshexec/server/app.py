"""The FastAPI application behind `sshexec serve`, and running it under uvicorn.

    create_app(settings)   the app: /api (api.py, cluster_api.py), the pages (pages.py), /static, /docs and /openapi.json
                           (logged in), /health; its node (node.py) from the lifespan's start to its end
    serve(app, bind, ...)  uvicorn on `bind`; SIGTERM drains the node then stops, Ctrl-C cancels the server's runs

Errors of the library are translated to HTTP here, at one place:
InputError 422, LookupError 404, NotAllowed 403, RunConflict 409.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import threading
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.middleware.body_limit import RequestBodyLimitMiddleware

from .. import __version__
from ..errors import InputError
from ..store.audit import AuditLog
from ..store.db import Database
from ..store.history import History
from ..store.sessions import SessionStore
from ..store.tokens import TokenStore
from ..ops.notify import Notifier
from . import api, cluster_api, metrics, pages, teams
from .auth import Auth, Principal, need
from .gate import AuthFirst
from .runs import NotAllowed, RunConflict, ServerRuns, Settings
from .workers import HealthCache

log = logging.getLogger("sshexec")

STATIC = Path(__file__).with_name("static")
CANCEL_WAIT = 9.0  # SIGTERM: runs are recorded cancelled within this (the promise is 10 s)
# Pages load only what this server serves; nothing inline (the API docs page keeps its own, looser policy).
CSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"


def create_app(settings: Settings, *, db: Database | str | Path | None = None, secure_cookies: bool = False, notify: bool = True) -> FastAPI:
    """`db`: the history's database (a Database, a URL, a home directory; default: $SSHEXEC_DB, else $SSHEXEC_HOME's).
    `notify`: send the notifications due (ops/notify.py) while the server runs."""
    db = Database.of(db)
    history = History(db)
    runs = ServerRuns(settings, history)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        import anyio

        if settings.cluster:
            from .node import Node

            runs.node = await anyio.to_thread.run_sync(lambda: Node(
                runs, db, name=settings.node, task_cap=settings.task_cap, stale=settings.node_stale, health=app.state.health, health_every=settings.health_every,
            ).start())  # fmt: skip
        notifier = Notifier(db).start() if notify else None
        yield
        if notifier is not None:
            notifier.stop()
        if runs.node is not None:
            runs.node.drain_self()  # no claim while the runs stop
        left = await anyio.to_thread.run_sync(runs.shutdown, CANCEL_WAIT)
        if runs.node is not None:
            await anyio.to_thread.run_sync(runs.node.stop)
        if left:
            log.warning("runs still stopping at shutdown: %s", ", ".join(left))

    app = FastAPI(
        title="sshexec",
        version=__version__,
        description="Runs, live logs, workers and triggers of sshexec. Authenticate with `Authorization: Bearer TOKEN` (`sshexec token create NAME --role viewer|operator|admin`).",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # served by _mount_docs, to logged-in callers only
        lifespan=lifespan,
    )
    app.state.history = history
    app.state.runs = runs
    app.state.audit = AuditLog(db)
    app.state.auth = Auth(TokenStore(db), SessionStore(db), secure_cookies=secure_cookies, audit=app.state.audit)
    app.state.health = HealthCache(settings.inventory, settings.parallel, db=db if settings.cluster else None)
    app.state.metrics = metrics.registry_for(db, app.state.health)
    app.include_router(api.router)
    app.include_router(cluster_api.router)
    app.include_router(teams.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _mount_docs(app)
    _errors(app)
    # Each one added goes outside the ones before: the headers below, then who is asking (from the
    # headers alone, gate.py), then the body's cap.
    app.add_middleware(RequestBodyLimitMiddleware, max_body_size=settings.max_body)
    app.add_middleware(AuthFirst)

    @app.middleware("http")
    async def headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("X-Frame-Options", "DENY")
        if not request.url.path.startswith(("/docs", "/openapi.json")):
            response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("Cache-Control", "no-store")
        if runs.node is not None:
            response.headers["X-Sshexec-Node"] = runs.node.name  # which node answered (behind a load balancer)
        return response

    return app


def _mount_docs(app: FastAPI) -> None:
    """/docs (from the swagger-ui files installed with sshexec: this machine may have no internet) and /openapi.json.

    Both need a login, as the API they describe does: any role may read them. The
    description names every endpoint, role and the server's version, and nobody
    without a token has a use for it.
    """
    import swagger_ui_bundle

    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets")

    @app.get("/openapi.json", include_in_schema=False)
    def openapi(_: Principal = Depends(need("viewer"))) -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    def docs(request: Request) -> Response:
        if request.app.state.auth.principal(request) is None:
            return RedirectResponse("/login?next=/docs", status_code=303)
        return get_swagger_ui_html(
            openapi_url="/openapi.json", title="sshexec API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js", swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon-32x32.png",
        )  # fmt: skip


def _errors(app: FastAPI) -> None:
    runs: ServerRuns = app.state.runs

    def public(value):
        """Every text of an answer, without this machine's file paths (ServerRuns.public)."""
        if isinstance(value, str):
            return runs.public(value)
        if isinstance(value, dict):
            return {k: public(v) for k, v in value.items()}
        if isinstance(value, list):
            return [public(v) for v in value]
        return value

    def answer(status: int, message: str, extra: dict | None = None) -> JSONResponse:
        return JSONResponse(public({"detail": message, **(extra or {})}), status_code=status)

    @app.exception_handler(InputError)
    async def bad_input(request: Request, exc: InputError):
        return answer(422, str(exc), {"error": exc.to_dict()})

    @app.exception_handler(LookupError)
    async def not_found(request: Request, exc: LookupError):
        return answer(404, str(exc.args[0]) if exc.args else "not found")

    @app.exception_handler(RunConflict)
    async def conflict(request: Request, exc: RunConflict):
        return answer(409, str(exc))

    @app.exception_handler(NotAllowed)
    async def not_allowed(request: Request, exc: NotAllowed):
        return answer(403, str(exc))


# -- binding and running -------------------------------------------------------------------------


def parse_bind(bind: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 as [ADDR]:PORT); InputError if it is not one."""
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit() or not host or not 0 <= int(port) < 65536:
        raise InputError(f"--bind {bind!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def parse_proxies(text: str | None) -> str | None:
    """--forwarded-allow-ips: comma-separated addresses or networks (or *), checked; None if empty."""
    if not text:
        return None
    entries = [e.strip() for e in text.split(",") if e.strip()]
    for e in entries:
        if e != "*":
            try:
                ipaddress.ip_network(e, strict=False)
            except ValueError:
                raise InputError(f"--forwarded-allow-ips: {e!r} is not an IP address or network", hint="e.g. 127.0.0.1 or 10.0.0.0/8,192.0.2.10") from None
    return ",".join(entries) or None


def serve(
    app: FastAPI, host: str, port: int, *, tls_cert: str | None = None, tls_key: str | None = None, on_ready=None, forwarded_allow_ips: str | None = None,
) -> None:  # fmt: skip
    """Run until SIGTERM or Ctrl-C; at that signal every run of this server is cancelled at once.

    `forwarded_allow_ips`: the reverse proxies whose X-Forwarded-For (and -Proto) uvicorn
    trusts for the client's address; None: the peer is the client.
    """
    import uvicorn

    runs: ServerRuns = app.state.runs

    class Server(uvicorn.Server):
        draining = False

        def handle_exit(self, sig, frame) -> None:
            node = runs.node
            if sig == signal.SIGTERM and node is not None and not self.draining and runs.settings.drain_timeout > 0:
                # SIGTERM drains: no new claims, health 503 (the load balancer stops sending), the node's
                # runs go on to their end (up to --drain-timeout), then the server stops. Another SIGTERM,
                # or Ctrl-C, cancels them at once.
                self.draining = True
                node.drain_self()
                log.warning("SIGTERM: node %s drains: its %d runs go on (up to %.0f s), then it stops", node.name, len(runs.active_ids()), runs.settings.drain_timeout)
                threading.Thread(target=self._drain_then_exit, args=(sig, frame), name="drain", daemon=True).start()
                return
            runs.cancel_all()  # first: the runs stop while connections close
            super().handle_exit(sig, frame)

        def _drain_then_exit(self, sig, frame) -> None:
            if not runs.wait_idle(runs.settings.drain_timeout):
                log.warning("drain: runs still going after %.0f s: cancelling them", runs.settings.drain_timeout)
                runs.cancel_all()
            self.should_exit = True

        async def shutdown(self, sockets=None) -> None:
            await super().shutdown(sockets)  # the lifespan's end waits for the runs to be recorded
            # uvicorn raises the signal again once it stopped, so the process would die "killed by
            # SIGTERM": the server handled it and its runs are recorded, so it exits 0 instead.
            captured = getattr(self, "_captured_signals", None)
            if isinstance(captured, list):
                captured.clear()

        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            if on_ready is not None and not self.should_exit:
                on_ready(self)

    config = uvicorn.Config(
        app, host=host, port=port, ssl_certfile=tls_cert, ssl_keyfile=tls_key,
        log_level="warning", timeout_graceful_shutdown=2, lifespan="on",
        proxy_headers=forwarded_allow_ips is not None, forwarded_allow_ips=forwarded_allow_ips,
    )  # fmt: skip
    Server(config).run()
