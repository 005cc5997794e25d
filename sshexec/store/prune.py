"""Retention: `sshexec history prune` deletes old runs with everything recorded about them.

A run goes when it started more than `older_than` days ago, it is not among
the `keep` newest runs of its runbook, and it is over: a run still
"running" stays, unless the history shows it "interrupted" (its process on
this machine is gone). With it go its steps, log chunks, artifacts and
artifact chunks; everything else is left as it was. Runs are deleted a batch
at a time, each batch in one transaction, so that a big prune never holds
the database for long.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from sqlalchemy import delete, func, select

from .cluster_schema import queue
from .schema import artifact_chunks, artifacts, log_chunks, runs, steps

BATCH = 200  # runs per transaction
DAY = 86400.0


@dataclass
class Pruned:
    """What a prune removed (or, with dry_run, would remove)."""

    runs: list[str] = field(default_factory=list)
    log_bytes: int = 0
    artifacts: int = 0
    artifact_bytes: int = 0
    dry_run: bool = False

    def to_dict(self) -> dict:
        return {"runs": self.runs, "count": len(self.runs), "log_bytes": self.log_bytes, "artifacts": self.artifacts, "artifact_bytes": self.artifact_bytes, "dry_run": self.dry_run}


def prune(history, *, older_than: float, keep: int = 0, dry_run: bool = False, now: float | None = None) -> Pruned:
    """Delete the runs `older_than` days whose runbook has `keep` newer ones; what went (or would go)."""
    db = history.db
    cutoff = (time.time() if now is None else now) - older_than * DAY
    rank = func.row_number().over(partition_by=runs.c.runbook, order_by=(runs.c.started.desc(), runs.c.id.desc())).label("rank")
    ranked = select(runs.c.id, runs.c.started, runs.c.status, rank).subquery()
    query = select(ranked.c.id, ranked.c.status).where(ranked.c.rank > keep, ranked.c.started < cutoff).order_by(ranked.c.started)
    with db.read() as c:
        rows = c.execute(query).all()
    # A run stored as "running" goes only if the history shows it interrupted (History._record).
    # A queued run waits for a node, a waiting one for a decision: neither is over.
    doomed = [rid for rid, status in rows if status not in ("running", "queued", "waiting") or _interrupted(history, rid)]
    out = Pruned(runs=doomed, dry_run=dry_run)
    for i in range(0, len(doomed), BATCH):
        batch = doomed[i : i + BATCH]
        with db.read() as c:
            out.log_bytes += c.execute(select(func.coalesce(func.sum(func.length(log_chunks.c.data)), 0)).where(log_chunks.c.run_id.in_(batch))).scalar_one()
            a = c.execute(select(func.count(), func.coalesce(func.sum(artifacts.c.size), 0)).where(artifacts.c.run_id.in_(batch))).one()
            out.artifacts += a[0]
            out.artifact_bytes += a[1]
        if dry_run:
            continue
        with db.write() as c:
            for table in (log_chunks, artifact_chunks, artifacts, steps, queue):
                c.execute(delete(table).where(table.c.run_id.in_(batch)))
            c.execute(delete(runs).where(runs.c.id.in_(batch)))
    return out


def _interrupted(history, run_id: str) -> bool:
    rec = history.run(run_id)
    return rec is not None and rec.status == "interrupted"
