"""The server nodes that share one database: check-ins, drain, losing a node, the maintenance lease, settings.

    register(db, node...)        a node comes up (or back): its row, "up"
    check_in(db, name)           every few seconds; says whether the node is to drain, and whether it was found lost
    sweep_lost(db, stale)        a node silent for `stale` seconds is "lost": its runs become "interrupted",
                                 naming it; a runbook with `on_node_loss: requeue` gets a new queued run that
                                 retries the interrupted one from its failed step, and so does a run that was
                                 waiting for an approval with nothing run on a worker yet (it waits again)
    watch(db, name, run_ids)     this node's runs as the database has them: ended elsewhere, or asked to cancel
    hold_lease(db, what, me, ttl)  one holder at a time; another takes it once it expired

Fencing (issue 20, item 5). A node whose check-ins stop is marked lost by any
survivor, in one transaction guarded by the node's `last_seen`: two survivors
never both act. Its runs' rows change from "running" to "interrupted", and
the node's writes of a run's end carry the run's claim (node, epoch) in
their WHERE (History.finish_run): a node that comes back (SIGCONT, a network
that heals) writes nothing over them, and its watch() sees them ended and
cancels them. A node that cannot reach the database for half of `stale`
cancels its runs itself (server/node.py): by the time survivors mark them,
their containers are being stopped.

Times are each node's clock (Unix seconds): nodes sharing a database keep
their clocks in step (NTP), as a lease needs.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError

from .cluster_schema import leases, nodes, queue, settings
from .notify import announce
from .queue import submit
from .approvals import approvals
from .schema import runs, steps

NODE_COLUMNS = (nodes.c.name, nodes.c.host, nodes.c.pid, nodes.c.url, nodes.c.task_cap, nodes.c.started, nodes.c.last_seen, nodes.c.draining, nodes.c.state, nodes.c.version)


@dataclass(frozen=True)
class NodeRecord:
    name: str
    host: str | None
    pid: int | None
    url: str | None
    task_cap: int
    started: float
    last_seen: float
    draining: bool
    state: str  # up | stopped | lost
    version: str | None
    running: int = 0
    maintenance: bool = False

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class Lost:
    """What sweep_lost did about one run of a lost node."""

    run_id: str
    node: str
    requeued_as: str | None
    waiting: bool = False  # it was waiting for an approval, with nothing run on a worker yet


def register(db, name: str, *, host: str, pid: int, url: str | None, task_cap: int, version: str) -> None:
    now = time.time()
    values = dict(host=host, pid=pid, url=url, task_cap=task_cap, started=now, last_seen=now, draining=0, state="up", version=version)
    with db.write() as c:
        if not c.execute(update(nodes).where(nodes.c.name == name).values(**values)).rowcount:
            c.execute(insert(nodes).values(name=name, **values))


def live_holder(db, name: str, stale: float) -> NodeRecord | None:
    """The node of this name if it checked in within `stale` seconds and did not stop (another process holds the name)."""
    found = node(db, name)
    if found and found.state == "up" and time.time() - found.last_seen < stale:
        return found
    return None


def check_in(db, name: str, *, draining_self: bool = False) -> tuple[bool, bool]:
    """The node is alive; (drain asked, was found lost). A lost node is up again from now on: its runs stay as survivors left them."""
    with db.write() as c:
        row = c.execute(select(nodes.c.draining, nodes.c.state).where(nodes.c.name == name)).first()
        values = {"last_seen": time.time(), "state": "up"}
        if draining_self:
            values["draining"] = 1
        c.execute(update(nodes).where(nodes.c.name == name).values(**values))
    if row is None:
        return False, True
    return bool(row[0]) or draining_self, row[1] == "lost"


def set_draining(db, name: str, on: bool) -> bool:
    """`sshexec nodes drain|undrain NAME`; False if there is no such node."""
    with db.write() as c:
        return bool(c.execute(update(nodes).where(nodes.c.name == name).values(draining=1 if on else 0)).rowcount)


def stopped(db, name: str) -> None:
    with db.write() as c:
        c.execute(update(nodes).where(nodes.c.name == name).values(state="stopped", last_seen=time.time()))


def node(db, name: str) -> NodeRecord | None:
    with db.read() as c:
        row = c.execute(select(*NODE_COLUMNS).where(nodes.c.name == name)).first()
    return _node(row) if row else None


def list_nodes(db) -> list[NodeRecord]:
    """Every node, with its running runs and whether it holds the maintenance lease."""
    now = time.time()
    with db.read() as c:
        rows = c.execute(select(*NODE_COLUMNS).order_by(nodes.c.name)).all()
        running = dict(c.execute(select(runs.c.node, func.count()).where((runs.c.status == "running") & runs.c.node.is_not(None)).group_by(runs.c.node)).all())
        holder = c.execute(select(leases.c.holder).where((leases.c.name == "maintenance") & (leases.c.expires > now))).scalar()
    return [_node(r, running=running.get(r[0], 0), maintenance=r[0] == holder) for r in rows]


def _node(row, **extra) -> NodeRecord:
    return NodeRecord(*row[:7], bool(row[7]), *row[8:10], **extra)


def sweep_lost(db, stale: float, *, by: str, requeue_of=None) -> list[Lost]:
    """Mark every node silent for `stale` seconds lost, and its running runs interrupted (or requeued).

    `requeue_of(runbook) -> bool`: whether that runbook (its name in the nodes' --runbooks) says
    `on_node_loss: requeue` (the caller reads runbooks; this layer does not)."""
    now = time.time()
    cutoff = now - stale
    with db.read() as c:
        silent = [r[0] for r in c.execute(select(nodes.c.name).where((nodes.c.state == "up") & (nodes.c.last_seen < cutoff))).all()]
    out: list[Lost] = []
    for name in silent:
        with db.write() as c:
            # Guarded by last_seen: if the node checked in meanwhile, or another survivor got here first, nothing happens.
            seen = c.execute(select(nodes.c.last_seen).where((nodes.c.name == name) & (nodes.c.state == "up") & (nodes.c.last_seen < cutoff))).scalar()
            if seen is None or not c.execute(update(nodes).where((nodes.c.name == name) & (nodes.c.last_seen == seen)).values(state="lost")).rowcount:
                continue
            silent_for = now - seen
            # The queue's row names the runbook as the nodes know it (its file in --runbooks), and the --var values.
            held = c.execute(
                select(runs.c.id, queue.c.runbook, queue.c.variables, queue.c.submitted_by, runs.c.status)
                .join(queue, queue.c.run_id == runs.c.id).where((runs.c.node == name) & runs.c.status.in_(("running", "waiting")))
            ).all()  # fmt: skip
            for run_id, runbook, variables, submitted_by, status in held:
                again = None
                # A run waiting for an approval with nothing run on a worker yet has nothing to lose: it waits
                # again on another node, as a retry (from its approval step), whatever its on_node_loss says.
                waiting = status == "waiting" and not _ran_on_a_worker(c, run_id)
                if waiting or (requeue_of is not None and requeue_of(runbook)):
                    again = submit(db, runbook, json.loads(variables or "{}"), by=submitted_by or by, retry_of=run_id, conn=c)
                message = f"interrupted: node {name} stopped checking in ({silent_for:.0f} s without a check-in; found by node {by})"
                if again:
                    why = "it was waiting for an approval, nothing had run on a worker" if waiting else "on_node_loss: requeue"
                    message += f"; requeued as run {again} ({why})"
                if status == "waiting":  # nobody may decide on the lost run any more: its retry asks again
                    c.execute(update(approvals).where((approvals.c.run_id == run_id) & approvals.c.decision.is_(None)).values(
                        decision="interrupted", by=f"(node {name} lost)", decided=now,
                    ))  # fmt: skip
                live = (runs.c.id == run_id) & runs.c.status.in_(("running", "waiting"))
                c.execute(update(runs).where(live).values(status="interrupted", exit_code=3, finished=now, message=message))
                c.execute(update(queue).where(queue.c.run_id == run_id).values(state="lost"))
                out.append(Lost(run_id, name, again, waiting))
            ended = [x.run_id for x in out if x.node == name]
            # Claimed but not started yet (the node died between the claim and the start): back in the queue.
            for (run_id,) in c.execute(select(runs.c.id).where((runs.c.node == name) & (runs.c.status == "queued"))).all():
                c.execute(update(queue).where(queue.c.run_id == run_id).values(state="queued", node=None))
                c.execute(update(runs).where(runs.c.id == run_id).values(node=None))
        for run_id in ended:  # after the transaction: run.failed for each (store/notify.py), its message naming the node
            announce(db, run_id, "interrupted")
    return out


def _ran_on_a_worker(c, run_id: str) -> bool:
    """Whether any step of the run ran (or runs) on a worker: not an approval's row (worker "-"), not skipped, not carried."""
    ran = (steps.c.run_id == run_id) & (steps.c.worker != "-") & (steps.c.status != "skipped") & steps.c.carried_from.is_(None)
    return c.execute(select(func.count()).select_from(steps).where(ran)).scalar_one() > 0


def watch(db, name: str, run_ids: list[str]) -> dict[str, tuple[str, int | None, str | None]]:
    """This node's runs as stored: run id -> (status, epoch, who asked it to stop)."""
    if not run_ids:
        return {}
    with db.read() as c:
        rows = c.execute(select(runs.c.id, runs.c.status, runs.c.epoch, runs.c.node, runs.c.cancel_asked_by).where(runs.c.id.in_(run_ids))).all()
    return {r[0]: (r[1] if r[3] == name else "moved", r[2], r[4]) for r in rows}


def hold_lease(db, what: str, me: str, ttl: float) -> bool:
    """Take or renew the lease `what` for `ttl` seconds; True while `me` holds it."""
    now = time.time()
    free = (leases.c.name == what) & ((leases.c.holder == me) | (leases.c.expires < now))
    try:
        with db.write() as c:
            row = c.execute(select(leases.c.holder, leases.c.expires).where(leases.c.name == what)).first()
            if row is None:
                c.execute(insert(leases).values(name=what, holder=me, expires=now + ttl, since=now))
                return True
            since = now if row[0] != me else None
            values = {"holder": me, "expires": now + ttl, **({"since": since} if since else {})}
            return bool(c.execute(update(leases).where(free).values(**values)).rowcount)
    except IntegrityError:
        return False  # another node inserted it first


def release_lease(db, what: str, me: str) -> None:
    with db.write() as c:
        c.execute(update(leases).where((leases.c.name == what) & (leases.c.holder == me)).values(expires=0.0))


def get_setting(db, name: str):
    with db.read() as c:
        value = c.execute(select(settings.c.value).where(settings.c.name == name)).scalar()
    return json.loads(value) if value is not None else None


def put_setting(db, name: str, value) -> None:
    with db.write() as c:
        if value is None:
            c.execute(settings.delete().where(settings.c.name == name))
        elif not c.execute(update(settings).where(settings.c.name == name).values(value=json.dumps(value))).rowcount:
            c.execute(insert(settings).values(name=name, value=json.dumps(value)))
