"""What teams need around runs, over HTTP: /metrics, notifications (their log and page).

    GET /metrics                   Prometheus text (server/metrics.py): any token, or serve --metrics-bind without one
    GET /api/notifications         endpoints (never their secrets) and the latest deliveries with every try (operator)
    GET /notifications             the same as a page (operator)
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response

from ..store.notify import NotifyStore
from .auth import Principal, need
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
