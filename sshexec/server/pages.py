"""The web pages: login, runs, one run, workers, runbooks, nodes, schedules, the audit trail (admin).
Rendered here; static/app.js makes them live.

Templates autoescape everything; the script builds what it adds with
textContent, never with HTML, so a variable's value or a log line holding
`<script>` shows as text. No inline script: the Content-Security-Policy
(app.py) allows only /static.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from urllib.parse import quote

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from .api import artifact_url
from .auth import LOGIN_COOKIE, SESSION_COOKIE, SESSION_TTL, Principal, check_same_origin, client_of, same_csrf

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=str(Path(__file__).with_name("templates")))


def _who(request: Request) -> Principal | None:
    return request.app.state.auth.principal(request)


def _page(request: Request, template: str, who: Principal, **context) -> HTMLResponse:
    return templates.TemplateResponse(request, template, {"who": who, "csrf": who.csrf or "", **context})


def _to_login(request: Request) -> RedirectResponse:
    return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)


def _local(path: str | None) -> str:
    """Only a path of this server is a place to go after login (no open redirect)."""
    return path if path and path.startswith("/") and not path.startswith("//") and "\\" not in path else "/"


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str = "/", error: str | None = None):
    value = secrets.token_urlsafe(32)
    response = templates.TemplateResponse(request, "login.html", {"who": None, "login_csrf": value, "next": _local(next), "error": error})
    response.set_cookie(LOGIN_COOKIE, value, httponly=True, samesite="strict", secure=request.app.state.auth.secure_cookies, path="/login")
    return response


@router.post("/login")
def login(request: Request, token: str = Form(""), csrf: str = Form(""), next: str = Form("/")):
    auth = request.app.state.auth
    check_same_origin(request)
    if not same_csrf(csrf, request.cookies.get(LOGIN_COOKIE)):
        raise HTTPException(403, "the login form expired: reload it and try again")
    try:
        auth.check_token(token.strip(), client_of(request))
    except HTTPException as exc:
        page = login_form(request, next=next, error="That token is not valid." if exc.status_code == 401 else exc.detail)
        page.status_code = exc.status_code
        page.headers.update(exc.headers or {})
        return page
    sid, _ = auth.open_session(token.strip())
    response = RedirectResponse(_local(next), status_code=303)
    response.set_cookie(SESSION_COOKIE, sid, max_age=SESSION_TTL, httponly=True, samesite="strict", secure=auth.secure_cookies, path="/")
    response.delete_cookie(LOGIN_COOKIE, path="/login")
    return response


@router.post("/logout")
def logout(request: Request, csrf: str = Form("")):
    auth = request.app.state.auth
    sid = request.cookies.get(SESSION_COOKIE)
    found = auth.session(sid)
    # A form cannot set a header: here the CSRF token comes as a field.
    if found is not None:
        check_same_origin(request)
        if not same_csrf(csrf, found[0].csrf):
            raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")
    auth.close_session(sid)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/", response_class=HTMLResponse)
def runs_page(request: Request):
    who = _who(request)
    if who is None:
        return _to_login(request)
    runs = request.app.state.history.runs(50)
    return _page(request, "runs.html", who, runs=runs, page="runs")


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, run_id: str):
    who = _who(request)
    if who is None:
        return _to_login(request)
    h = request.app.state.history
    rec = h.run(run_id)
    if rec is None:
        raise HTTPException(404, f"no run {run_id!r} in the history")
    arts = [{**a, "url": artifact_url(rec.id, a["worker"], a["name"])} for a in h.artifacts(rec.id)]
    from ..store.approvals import ApprovalStore

    approval = ApprovalStore(h.db).get(rec.id)
    return _page(request, "run.html", who, run=rec, steps=h.steps(rec.id), artifacts=arts, approval=approval, page="run")


@router.get("/workers", response_class=HTMLResponse)
def workers_page(request: Request):
    who = _who(request)
    if who is None:
        return _to_login(request)
    return _page(request, "workers.html", who, page="workers")


@router.get("/runbooks", response_class=HTMLResponse)
def runbooks_page(request: Request):
    who = _who(request)
    if who is None:
        return _to_login(request)
    return _page(request, "runbooks.html", who, runbooks=request.app.state.runs.catalogue(), page="runbooks")


@router.get("/nodes", response_class=HTMLResponse)
def nodes_page(request: Request):
    import time

    from ..store.cluster import list_nodes

    who = _who(request)
    if who is None:
        return _to_login(request)
    state = request.app.state
    here = state.runs.node.name if state.runs.node is not None else "-"
    return _page(request, "nodes.html", who, nodes=list_nodes(state.history.db), now=time.time(), here=here, db=state.history.url, page="nodes")


@router.get("/schedules", response_class=HTMLResponse)
def schedules_page(request: Request):
    from ..store.schedules import list_schedules

    who = _who(request)
    if who is None:
        return _to_login(request)
    state = request.app.state
    return _page(request, "schedules.html", who, schedules=list_schedules(state.history.db), runbooks=list(state.runs.runbook_files()), page="schedules")


@router.get("/audit", response_class=HTMLResponse)
def audit_page(request: Request, since: str | None = "7d"):
    """The audit trail (admin), the last 7 days by default (?since=1h, ?since=2026-12-01)."""
    from ..store.audit import parse_since

    who = _who(request)
    if who is None:
        return _to_login(request)
    if not who.allows("admin"):
        raise HTTPException(403, f"token {who.name!r} has the role {who.token.role}; the audit trail needs admin")
    entries = request.app.state.audit.entries(since=parse_since(since), limit=1000)
    return _page(request, "audit.html", who, entries=entries, since=since, page="audit")


@router.get("/favicon.ico")
def favicon() -> Response:
    return Response(status_code=204)
