"""Approval steps, as the database keeps them: the request, and the one decision it gets.

    table approvals: run_id, step, message, role, asked, deadline, decision (approved | rejected | timed-out), by, comment, decided

The run's process writes the request (`ask`: the row, the step's row with the
status "waiting", and the run's status "waiting") and then only reads, every
POLL seconds, until a decision is there or the deadline passed. Anyone who
may decide writes the decision (`decide`): the server for a token of the
step's role, `sshexec approve` for a person with the database, the run's own
terminal prompt. The first decision wins: the UPDATE takes a row only while
its decision is empty and its deadline is ahead, on either engine, so two
people deciding at once get one "approved" and one "already decided".
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from sqlalchemy import Column, Float, PrimaryKeyConstraint, Table, Text, insert, select, update

from ..errors import InputError
from .db import Database
from .schema import metadata, runs, steps

APPROVED, REJECTED, TIMED_OUT = "approved", "rejected", "timed-out"
POLL = 0.5  # seconds between the waiting run's looks at its row

approvals = Table(
    "approvals", metadata,
    Column("run_id", Text, nullable=False),
    Column("step", Text, nullable=False),
    Column("message", Text, nullable=False),
    Column("role", Text, nullable=False),
    Column("asked", Float, nullable=False),
    Column("deadline", Float, nullable=False),
    Column("decision", Text),
    Column("by", Text),
    Column("comment", Text),
    Column("decided", Float),
    PrimaryKeyConstraint("run_id", "step"),
)  # fmt: skip


@dataclass(frozen=True)
class Approval:
    run_id: str
    step: str
    message: str
    role: str
    asked: float
    deadline: float
    decision: str | None = None
    by: str | None = None
    comment: str | None = None
    decided: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class AlreadyDecided(Exception):
    """The approval was decided (or timed out) before this decision: 409."""


class ApprovalStore:
    """The approvals table. `where`: as History's."""

    def __init__(self, where: Database | str | None = None):
        self.db = Database.of(where).ready()

    def ask(self, run_id: str, seq: int, step: str, *, message: str, role: str, timeout: float) -> Approval:
        """The run waits from now: the request, the step's row (status waiting), the run's status."""
        now = time.time()
        a = Approval(run_id, step, message, role, now, now + timeout)
        with self.db.write() as c:
            c.execute(insert(approvals).values(**{k: v for k, v in a.to_dict().items() if v is not None}))
            c.execute(insert(steps).values(run_id=run_id, seq=seq, step=step, worker="-", attempt=1, attempts=1, status="waiting", started=now))
            c.execute(update(runs).where(runs.c.id == run_id, runs.c.status == "running").values(status="waiting"))
        return a

    def resumed(self, run_id: str) -> None:
        """The run goes on after its decision."""
        with self.db.write() as c:
            c.execute(update(runs).where(runs.c.id == run_id, runs.c.status == "waiting").values(status="running"))

    def get(self, run_id: str, step: str | None = None) -> Approval | None:
        """The run's approval of `step`, else its latest (the one it waits on, if it waits)."""
        a = approvals.c
        query = select(approvals).where(a.run_id == run_id)
        query = query.where(a.step == step) if step is not None else query.order_by(a.asked.desc()).limit(1)
        with self.db.read() as c:
            row = c.execute(query).first()
        return Approval(*row) if row else None

    def of_run(self, run_id: str) -> list[Approval]:
        with self.db.read() as c:
            return [Approval(*r) for r in c.execute(select(approvals).where(approvals.c.run_id == run_id).order_by(approvals.c.asked)).all()]

    def decide(self, run_id: str, decision: str, *, by: str, comment: str | None = None, step: str | None = None) -> Approval:
        """Decide the approval the run waits on. LookupError (no such request), AlreadyDecided (too late)."""
        if decision not in (APPROVED, REJECTED):
            raise InputError(f"decision must be approve or reject, not {decision!r}", field="decision")
        if comment is not None and len(comment) > 2000:
            raise InputError("the comment is longer than 2000 characters", field="comment")
        found = self.get(run_id, step)
        if found is None:
            raise LookupError(f"run {run_id} has no approval step waiting")
        now = time.time()
        a = approvals.c
        with self.db.write() as c:
            taken = c.execute(
                update(approvals).where(a.run_id == run_id, a.step == found.step, a.decision.is_(None), a.deadline > now)
                .values(decision=decision, by=by[:200], comment=comment, decided=now)
            ).rowcount  # fmt: skip
        if not taken:
            now_found = self.get(run_id, found.step)
            said = f"{now_found.decision} by {now_found.by}" if now_found and now_found.decision else "timed out"
            raise AlreadyDecided(f"run {run_id}: step {found.step} was already decided ({said})")
        return self.get(run_id, found.step)

    def expire(self, run_id: str, step: str, *, decision: str = TIMED_OUT) -> Approval:
        """The deadline passed (or the run was cancelled) with no decision: the waiting run records it (unless one came just now)."""
        a = approvals.c
        with self.db.write() as c:
            c.execute(update(approvals).where(a.run_id == run_id, a.step == step, a.decision.is_(None)).values(decision=decision, by=f"({decision})", decided=time.time()))
        return self.get(run_id, step)
