"""The run queue that every server node pulls from (issue 20): submit, claim, cancel while queued.

    submit(db, runbook, variables, by)   a queued run: its `runs` row (status "queued") and its `queue` row, at once
    claim(db, node, n)                   up to n of the oldest queued runs, each for exactly one node
    cancel_queued(db, run_id, by)        a run not claimed yet ends "cancelled" without running

Claiming is `SELECT … FOR UPDATE SKIP LOCKED` on PostgreSQL: nodes polling at
once each lock different rows and never wait on each other; a row locked by
one claim is skipped by the others, and the claim's UPDATE makes it theirs
for good. SQLite has one writer at a time (BEGIN IMMEDIATE), which gives the
same guarantee with one node. (docs/architecture.md says why not procrastinate.)

Each claim adds one to the row's `epoch` and writes (node, epoch) into the
run's row; the node then writes the run's start and end only under that pair
(History.start_run / finish_run), so that a node found lost in between can
never write over what another node recorded (store/cluster.py).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from sqlalchemy import delete, exists, insert, select, update

from .cluster_schema import queue
from .history import new_run_id
from .notify import announce
from .schema import runs


@dataclass(frozen=True)
class Claim:
    """A queued run, now this node's."""

    run_id: str
    runbook: str
    variables: dict
    submitted_by: str | None
    node: str
    epoch: int
    retry_of: str | None = None

    @property
    def key(self) -> tuple[str, int]:
        return (self.node, self.epoch)


def submit(db, runbook: str, variables: dict | None = None, *, by: str, retry_of: str | None = None, conn=None, run_id: str | None = None) -> str:
    """Queue runbook (a name of the nodes' --runbooks directory); the new run's id.

    `conn`: an open write transaction to join (a schedule's tick and its run are written together)."""
    run_id = run_id or new_run_id()
    now = time.time()

    def write(c) -> None:
        c.execute(insert(runs).values(
            id=run_id, runbook=runbook, started=now, status="queued", variables=json.dumps(variables or {}), started_by=by, retry_of=retry_of,
            options="{}",
        ))  # fmt: skip
        c.execute(insert(queue).values(run_id=run_id, runbook=runbook, variables=json.dumps(variables or {}), submitted=now, submitted_by=by, state="queued", retry_of=retry_of))

    if conn is not None:
        write(conn)
    else:
        with db.write() as c:
            write(c)
    return run_id


def waiting(db) -> bool:
    """Whether any run waits to be claimed (one indexed read: the nodes poll this before they write)."""
    with db.read() as c:
        return bool(c.execute(select(exists().where(queue.c.state == "queued"))).scalar())


def claim(db, node: str, n: int) -> list[Claim]:
    """Up to `n` of the oldest queued runs, claimed for `node` in one transaction."""
    if n < 1:
        return []
    query = select(queue.c.seq, queue.c.run_id, queue.c.runbook, queue.c.variables, queue.c.submitted_by, queue.c.epoch, queue.c.retry_of)
    query = query.where(queue.c.state == "queued").order_by(queue.c.seq).limit(n)
    if db.dialect == "postgresql":
        query = query.with_for_update(skip_locked=True)
    now = time.time()
    out = []
    with db.write() as c:
        for seq, run_id, runbook, variables, by, epoch, retry_of in c.execute(query).all():
            epoch += 1
            c.execute(update(queue).where(queue.c.seq == seq).values(state="claimed", node=node, epoch=epoch, claimed=now))
            c.execute(update(runs).where(runs.c.id == run_id).values(node=node, epoch=epoch))
            out.append(Claim(run_id, runbook, json.loads(variables or "{}"), by, node, epoch, retry_of))
    return out


def cancel_queued(db, run_id: str, by: str) -> bool:
    """End a run no node has claimed yet as cancelled; False if it is not waiting (claimed meanwhile, or over)."""
    with db.write() as c:
        gone = c.execute(delete(queue).where((queue.c.run_id == run_id) & (queue.c.state == "queued"))).rowcount
        if gone:
            c.execute(update(runs).where((runs.c.id == run_id) & (runs.c.status == "queued")).values(
                status="cancelled", exit_code=130, finished=time.time(), message=f"cancelled by {by} while queued",
            ))  # fmt: skip
    if gone:
        announce(db, run_id, "cancelled")  # run.cancelled, as for a run cancelled while it ran (store/notify.py)
    return bool(gone)


def fail_claimed(db, claim: Claim, message: str, *, status: str = "error", exit_code: int = 3) -> None:
    """A claimed run that could not start (its runbook missing on this node, bad variables): recorded so, under the claim."""
    held = (runs.c.id == claim.run_id) & (runs.c.node == claim.node) & (runs.c.epoch == claim.epoch) & runs.c.status.in_(("queued", "running"))
    with db.write() as c:
        done = c.execute(update(runs).where(held).values(status=status, exit_code=exit_code, finished=time.time(), message=message)).rowcount
    if done:
        announce(db, claim.run_id, status)


def depth(db) -> int:
    """How many runs wait in the queue."""
    from sqlalchemy import func

    with db.read() as c:
        return c.execute(select(func.count()).select_from(queue).where(queue.c.state == "queued")).scalar_one()
