"""What teams need around runs, over HTTP: /metrics, notifications (their log and page).

    GET /metrics                   Prometheus text (server/metrics.py): any token, or serve --metrics-bind without one
    GET /api/notifications         endpoints (never their secrets) and the latest deliveries with every try (operator)
    GET /notifications             the same as a page (operator)
    GET /api/runs/{id}/approval    the approval the run waits on, or its last (viewer)
    POST /api/runs/{id}/approval   {"decision": "approve" | "reject", "comment": "..."}: a token of the step's role (operator or admin)
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from ..store.approvals import AlreadyDecided, ApprovalStore
from ..store.notify import NotifyStore
from .auth import Principal, client_of, need
from .metrics import exposition

router = APIRouter()


@router.get("/metrics", include_in_schema=True, summary="Prometheus metrics: runs, step durations, queue, workers, notifications")
def metrics(request: Request, _: Principal = Depends(need("viewer"))) -> Response:
    data, content_type = exposition(request.app.state.metrics)
    return Response(data, media_type=content_type)


def _notifications(request: Request, run_id: str | None, limit: int) -> dict:
    store = NotifyStore(request.app.state.history.db)
    return {"endpoints": [e.to_dict() for e in store.endpoints()], "deliveries": store.log(run_id=run_id, limit=limit)}


@router.get("/api/notifications", summary="Notification endpoints and the latest deliveries, each with its tries (operator)")
def notifications(
    request: Request, run_id: str | None = Query(None, description="only this run's"), limit: int = Query(100, ge=1, le=1000), _: Principal = Depends(need("operator"))
) -> dict:
    return _notifications(request, run_id, limit)


@router.get("/notifications", response_class=HTMLResponse, include_in_schema=False)
def notifications_page(request: Request):
    from .pages import _page, _to_login, _who

    who = _who(request)
    if who is None:
        return _to_login(request)
    if not who.allows("operator"):
        raise HTTPException(403, f"token {who.name!r} has the role {who.token.role}; notifications need operator")
    return _page(request, "notifications.html", who, page="notifications", **_notifications(request, None, 200))


class ApprovalRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decision: Literal["approve", "reject"]
    comment: str | None = Field(default=None, max_length=2000, description="recorded with the decision, shown in the run's log")


@router.get("/api/runs/{run_id}/approval", summary="The approval a run waits on (or its last one)")
def get_approval(request: Request, run_id: str, _: Principal = Depends(need("viewer"))) -> dict:
    found = ApprovalStore(request.app.state.history.db).get(run_id)
    if found is None:
        raise HTTPException(404, f"run {run_id} has no approval step")
    return found.to_dict()


@router.post("/api/runs/{run_id}/approval", summary="Approve or reject the step a run waits on (a token of the step's role)")
def post_approval(request: Request, run_id: str, body: ApprovalRequest, who: Principal = Depends(need("viewer"))) -> dict:
    store = ApprovalStore(request.app.state.history.db)
    found = store.get(run_id)
    if found is None:
        raise HTTPException(404, f"run {run_id} has no approval step")
    if not who.allows(found.role):
        raise HTTPException(403, f"token {who.name!r} has the role {who.token.role}; step {found.step} needs {found.role} to decide")
    decision = "approved" if body.decision == "approve" else "rejected"
    try:
        decided = store.decide(run_id, decision, by=f"token:{who.name}", comment=body.comment, step=found.step)
    except AlreadyDecided as exc:
        raise HTTPException(409, str(exc)) from None
    request.app.state.audit.record(
        "run.approve" if decision == "approved" else "run.reject", who=f"token:{who.name}", source=f"http {client_of(request)}",
        target=run_id, detail={"step": found.step, "commented": bool(body.comment)},
    )  # fmt: skip
    return decided.to_dict()
