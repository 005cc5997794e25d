"""The cluster under /api and the load balancer's health check: nodes, drain, schedules, /health.

    GET  /health                     200 while this node takes work; 503 while it drains or has no database
    GET  /api/nodes                  every node: last seen, task cap, running runs, draining, maintenance
    POST /api/nodes/{name}/drain     (admin) the node finishes its runs and claims no new ones
    POST /api/nodes/{name}/undrain   (admin)
    GET  /api/schedules   POST /api/schedules (operator)   DELETE /api/schedules/{name} (operator)
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse

from ..store import cluster, schedules
from ..views import NodeView, ScheduleRequest, ScheduleView
from .auth import Principal, client_of, need

router = APIRouter()
viewer, operator, admin = Depends(need("viewer")), Depends(need("operator")), Depends(need("admin"))


def _db(request: Request):
    return request.app.state.history.db


@router.get("/health", include_in_schema=False)
def health(request: Request) -> JSONResponse:
    """For a load balancer (haproxy's `option httpchk GET /health`): no login, no detail beyond the node's state."""
    node = request.app.state.runs.node
    if node is None:
        return JSONResponse({"state": "up"})
    ok, why = node.health()
    return JSONResponse({"node": node.name, "state": why}, status_code=200 if ok else 503)


@router.get("/api/nodes", response_model=list[NodeView], summary="The server nodes sharing this database")
def list_nodes(request: Request, _: Principal = viewer) -> list[NodeView]:
    return [NodeView(**n.to_dict()) for n in cluster.list_nodes(_db(request))]


def _audit(request: Request, action: str, who: Principal, target: str, detail: dict | None = None) -> None:
    """The change's entry in the audit trail (store/audit.py): the token, and the client's address."""
    request.app.state.audit.record(action, who=f"token:{who.name}", source=f"http {client_of(request)}", target=target, detail=detail)


def _drain(request: Request, name: str, on: bool, who: Principal) -> dict:
    if not cluster.set_draining(_db(request), name, on):
        raise HTTPException(404, f"no node named {name!r}: see GET /api/nodes")
    _audit(request, "node.drain" if on else "node.undrain", who, name)
    node = request.app.state.runs.node
    if node is not None and node.name == name:
        node.wake.set()
    return {"node": name, "draining": on}


@router.post("/api/nodes/{name}/drain", summary="Drain a node: it finishes its runs and claims no new ones (admin)")
def drain(request: Request, name: str, who: Principal = admin) -> dict:
    return _drain(request, name, True, who)


@router.post("/api/nodes/{name}/undrain", summary="Let a drained node claim runs again (admin)")
def undrain(request: Request, name: str, who: Principal = admin) -> dict:
    return _drain(request, name, False, who)


@router.get("/api/schedules", response_model=list[ScheduleView], summary="Schedules: runbooks queued on a cron expression")
def list_schedules(request: Request, _: Principal = viewer) -> list[ScheduleView]:
    return [ScheduleView(**s.to_dict()) for s in schedules.list_schedules(_db(request))]


@router.post("/api/schedules", status_code=201, response_model=ScheduleView, summary="Add a schedule (operator)")
def add_schedule(request: Request, body: ScheduleRequest, who: Principal = operator) -> ScheduleView:
    request.app.state.runs.check(body.runbook, body.vars, by=who.name)  # an unknown runbook: 404; bad variables: 422
    s = schedules.add(_db(request), body.name, body.cron, body.runbook, body.vars, by=f"token:{who.name}")
    _audit(request, "schedule.add", who, s.name, {"cron": s.cron, "runbook": s.runbook, "vars": sorted(body.vars)})
    return ScheduleView(**s.to_dict())


@router.delete("/api/schedules/{name}", summary="Remove a schedule (operator)")
def remove_schedule(request: Request, name: str, who: Principal = operator) -> dict:
    if not schedules.remove(_db(request), name):
        raise HTTPException(404, f"no schedule named {name!r}")
    _audit(request, "schedule.remove", who, name)
    return {"removed": name}
