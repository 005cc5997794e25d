"""Schedules: a runbook queued on a cron expression, exactly once per tick across every node.

    add(db, name, cron, runbook, variables, by)   remove(db, name)   list_schedules(db)
    fire_due(db, node, now)   the ticks due now, each queued once: called by every node at each check-in

A tick fires in one transaction that inserts its (schedule, tick) row, whose
primary key no second node can insert again, together with the queued run
and the schedule's `last_tick`. A node that dies mid-tick commits all of it
or none of it; in the second case the next node to check in fires the tick.

Missed ticks (every node down, or a node slower than the tick): when a node
checks in, only the newest tick due since the last one that fired is queued,
once; older missed ticks are skipped, never queued in a burst (a deployment
run ten times in a row on a restart is never what anyone wanted). A schedule
added now fires at its next tick, not for ticks before it existed.

Cron expressions have 5 fields (minute hour day month weekday) or 6 (seconds
last), read by croniter, in UTC.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from ..errors import InputError
from .cluster_schema import schedule_ticks, schedules
from .queue import submit

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class Schedule:
    name: str
    cron: str
    runbook: str
    variables: dict
    created: float
    created_by: str | None
    last_tick: float | None

    def next_tick(self, now: float | None = None) -> float:
        from croniter import croniter

        return croniter(self.cron, now or time.time()).get_next(float)

    def to_dict(self) -> dict:
        return {**{k: getattr(self, k) for k in self.__dataclass_fields__}, "next_tick": self.next_tick()}


def check_cron(expr: str) -> str:
    """`expr` if croniter reads it (5 or 6 fields); InputError naming the field otherwise."""
    from croniter import croniter

    expr = " ".join(str(expr).split())
    if len(expr.split()) not in (5, 6) or not croniter.is_valid(expr):
        raise InputError(
            f"--cron {expr!r} is not a cron expression", field="--cron",
            hint="5 fields, minute hour day-of-month month day-of-week (UTC), e.g. '*/5 * * * *'; a 6th field, last, gives seconds",
        )  # fmt: skip
    return expr


def add(db, name: str, cron: str, runbook: str, variables: dict | None = None, *, by: str | None = None) -> Schedule:
    if not NAME.fullmatch(name or ""):
        raise InputError(f"bad schedule name {name!r}: 1 to 64 letters, digits, _ . - starting with a letter or digit", field="name")
    cron = check_cron(cron)
    now = time.time()
    try:
        with db.write() as c:
            c.execute(insert(schedules).values(name=name, cron=cron, runbook=runbook, variables=json.dumps(variables or {}), created=now, created_by=by))
    except IntegrityError:
        raise InputError(f"there is a schedule named {name!r} already", field="name", hint=f"sshexec schedule remove {name}, then add it again") from None
    return Schedule(name, cron, runbook, dict(variables or {}), now, by, None)


def remove(db, name: str) -> bool:
    with db.write() as c:
        return bool(c.execute(delete(schedules).where(schedules.c.name == name)).rowcount)


def list_schedules(db) -> list[Schedule]:
    with db.read() as c:
        rows = c.execute(select(*schedules.c).order_by(schedules.c.name)).all()
    return [Schedule(r.name, r.cron, r.runbook, json.loads(r.variables or "{}"), r.created, r.created_by, r.last_tick) for r in rows]


def ticks(db, name: str) -> list[tuple[float, str, str | None]]:
    """The ticks of a schedule that fired: (tick, run id, node), oldest first."""
    t = schedule_ticks.c
    with db.read() as c:
        return [tuple(r) for r in c.execute(select(t.tick, t.run_id, t.node).where(t.schedule == name).order_by(t.tick)).all()]


def fire_due(db, node: str, now: float | None = None) -> list[tuple[str, float, str]]:
    """Queue each schedule's newest due tick that has not fired; (schedule, tick, run id) for those this call fired."""
    from croniter import croniter

    now = time.time() if now is None else now
    fired = []
    for s in list_schedules(db):
        tick = croniter(s.cron, now).get_prev(float)
        if tick < s.created or (s.last_tick is not None and tick <= s.last_tick):
            continue
        try:
            with db.write() as c:
                run_id = submit(db, s.runbook, s.variables, by=f"schedule:{s.name}", conn=c)
                c.execute(insert(schedule_ticks).values(schedule=s.name, tick=tick, run_id=run_id, node=node, fired=time.time()))
                c.execute(update(schedules).where(schedules.c.name == s.name).values(last_tick=tick))
        except IntegrityError:
            continue  # another node fired this tick: its transaction, run included, is the one that counts
        fired.append((s.name, tick, run_id))
    return fired
