"""The HTTP API under /api: runs, their live logs and artifacts, triggers, cancels, workers, runbooks.

Every answer is a model of sshexec/views.py (the CLI's --json prints the same
ones). Everything shown comes from the history, which holds only masked text.
"""

from __future__ import annotations

import json
import time
from urllib.parse import quote

import anyio
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from sse_starlette import EventSourceResponse

from ..core.status import check_run_status
from ..store import artifacts as stored
from ..store.logtail import POLL, LogTail
from ..views import AuditList, AuditView, HealthReport, RunbookView, RunDetail, RunList, RunSummary, TriggerRequest, TriggerResponse
from .auth import Principal, client_of, need

router = APIRouter(prefix="/api")
viewer, operator, admin = Depends(need("viewer")), Depends(need("operator")), Depends(need("admin"))


def _state(request: Request):
    return request.app.state


def _record(request: Request, run_id: str):
    rec = _state(request).history.run(run_id)
    if rec is None:
        raise HTTPException(404, f"no run {run_id!r} in the history")
    return rec


def artifact_url(run_id: str, worker: str, name: str) -> str:
    return f"/api/runs/{quote(run_id)}/artifacts/{quote(worker, safe='')}/{quote(name, safe='')}"


@router.get("/runs", response_model=RunList, summary="The run history, newest first")
def list_runs(
    request: Request,
    status: str | None = Query(None, description="only runs with this status"),
    runbook: str | None = Query(None, description="only runs of this runbook (its name:)"),
    limit: int = Query(20, ge=1, le=500),
    offset: int = Query(0, ge=0),
    _: Principal = viewer,
) -> RunList:
    status = check_run_status(status or None)
    h = _state(request).history
    records = h.runs(limit, offset=offset, status=status, runbook=runbook)
    return RunList(runs=[RunSummary.of(r) for r in records], total=h.count(status=status, runbook=runbook), limit=limit, offset=offset)


@router.get("/runs/{run_id}", response_model=RunDetail, summary="One run: steps, masked outputs, artifacts")
def get_run(request: Request, run_id: str, _: Principal = viewer) -> RunDetail:
    rec = _record(request, run_id)
    return RunDetail.load(_state(request).history, rec, artifact_url=lambda w, n: artifact_url(rec.id, w, n))


@router.get(
    "/runs/{run_id}/log",
    summary="The run's log as server-sent events: live while it runs, whole once it ended",
    description=(
        "Events: `log` (data: a JSON string, whole lines of the masked log, each prefixed `WORKER/STEP | ` for stdout "
        "or `WORKER/STEP ! ` for stderr; id: the byte offset after it, so a reconnecting client (Last-Event-ID) "
        "gets what it missed) and, last, `end` (data: {status, exit_code}). The stream checks its token or session "
        "again every `serve --stream-recheck` seconds (default 30): once it is revoked or ended, a `revoked` event "
        "(data: {detail}) ends the stream."
    ),
    response_class=EventSourceResponse,
)
async def run_log(request: Request, run_id: str, last_event_id: str | None = Header(None), who: Principal = viewer):
    state = _state(request)
    history = state.history
    await anyio.to_thread.run_sync(_record, request, run_id)
    offset = int(last_event_id) if last_event_id and last_event_id.isdigit() else 0
    tail = LogTail.for_run(history, run_id, offset=offset)
    recheck = state.runs.settings.stream_recheck

    async def events():
        checked = time.monotonic()
        try:
            while True:
                # A stream may last for hours: the token or session that opened it must still be there.
                if time.monotonic() - checked >= recheck:
                    if not await anyio.to_thread.run_sync(state.auth.still_valid, who):
                        yield {"event": "revoked", "data": json.dumps({"detail": f"the {'session' if who.via == 'session' else 'token'} that opened this stream has ended: log in again"})}
                        return
                    checked = time.monotonic()
                data = await anyio.to_thread.run_sync(tail.poll)
                if data:
                    yield {"event": "log", "id": str(tail.offset), "data": json.dumps(data.decode("utf-8", "replace"))}
                elif tail.done:
                    rec = await anyio.to_thread.run_sync(history.run, run_id)
                    yield {"event": "end", "data": json.dumps({"status": rec.status, "exit_code": rec.exit_code})}
                    return
                else:
                    await anyio.sleep(POLL)
        finally:
            tail.close()

    return EventSourceResponse(events(), ping=15)


@router.get(
    "/runs/{run_id}/artifacts/{worker}/{name}", summary="Download an artifact of a run",
    response_class=StreamingResponse, responses={200: {"content": {"application/octet-stream": {}}}},
)  # fmt: skip
def get_artifact(request: Request, run_id: str, worker: str, name: str, _: Principal = viewer):
    """Streamed from the database a chunk at a time: a big file never sits whole in the server's memory."""
    db = _state(request).history.db
    _record(request, run_id)
    found = stored.artifact(db, run_id, worker, name)
    if found is None:
        raise HTTPException(404, f"run {run_id} has no artifact {worker}/{name}")
    if found["chunks"] is None:
        raise HTTPException(410, f"artifact {worker}/{name} of run {run_id}: its file was gone when the history was upgraded; only its record is kept")
    headers = {"Content-Disposition": f"attachment; filename*=utf-8''{quote(name, safe='')}", "Content-Length": str(found["size"])}
    return StreamingResponse(stored.chunks(db, run_id, worker, name, found["chunks"]), media_type="application/octet-stream", headers=headers)


@router.post(
    "/runs", status_code=202, response_model=TriggerResponse, summary="Queue a run of a runbook of the servers' --runbooks directory",
    description="Checked first (an unknown runbook: 404; a bad variable or a missing sensitive value: 422), then queued: "
    "the first node with room under its task cap claims it (FIFO). The run's status is `queued` until then.",
)  # fmt: skip
def trigger(request: Request, body: TriggerRequest, who: Principal = operator):
    run_id = _state(request).runs.enqueue(body.runbook, body.vars, by=who.name, source=f"http {client_of(request)}")
    url = f"/api/runs/{run_id}"
    return JSONResponse(TriggerResponse(run_id=run_id, url=url).model_dump(), status_code=202, headers={"Location": url})


@router.post("/runs/{run_id}/cancel", status_code=202, summary="Cancel a running run")
def cancel(request: Request, run_id: str, who: Principal = operator) -> dict:
    how = _state(request).runs.cancel(run_id, admin=who.allows("admin"), who=f"token:{who.name}")
    _state(request).audit.record("run.cancel", who=f"token:{who.name}", source=f"http {client_of(request)}", target=run_id, detail={"how": how})
    return {"run_id": run_id, "status": how}


@router.get("/workers", response_model=HealthReport, summary="Each worker's health (sshexec check), cached")
def workers(request: Request, refresh: bool = Query(False, description="run a new check (operator)"), who: Principal = viewer) -> HealthReport:
    if refresh and not who.allows("operator"):
        raise HTTPException(403, f"token {who.name!r} has the role {who.token.role}; a refresh needs operator")
    return _state(request).health.report(refresh=refresh)


@router.get("/runbooks", response_model=list[RunbookView], summary="The runbooks this server may start")
def runbooks(request: Request, _: Principal = viewer) -> list[RunbookView]:
    return _state(request).runs.catalogue()


@router.get("/audit", response_model=AuditList, summary="The audit trail: who did what, when, from where (admin)")
def audit_trail(
    request: Request,
    since: str | None = Query(None, description="a duration back from now (1h, 2d) or a date (2026-12-03T08:00, UTC)"),
    action: str | None = Query(None, description="only this action (run.trigger, token.create, login.failed...)"),
    limit: int = Query(1000, ge=1, le=10000),
    _: Principal = admin,
) -> AuditList:
    from ..store.audit import parse_since

    entries = _state(request).audit.entries(since=parse_since(since), action=action, limit=limit)
    return AuditList(entries=[AuditView(**e.to_dict()) for e in entries])


@router.get("/me", summary="Who this token or session is")
def me(who: Principal = viewer) -> dict:
    return {"name": who.name, "role": who.token.role, "via": who.via}
