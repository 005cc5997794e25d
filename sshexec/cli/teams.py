"""What teams need around runs: `sshexec audit` (who did what).

Each command reads or writes the history's database (--db), the one every
server and command line sharing it sees.
"""

from __future__ import annotations

import time

from invoke import task

from . import common, ui
from .common import DB_HELP, HELP_JSON


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "–"


@task(
    help={
        "since": "only entries from then on: a duration back from now (1h, 2d) or a date (2026-12-03, 2026-12-03T08:00, UTC)",
        "action": "only this action: run.trigger, run.cancel, run.approve, run.reject, token.create, token.revoke, lock.unlock, gc, login.failed...",
        "limit": "at most the N newest entries (default 1000)",
        "json": HELP_JSON,
        **DB_HELP,
    }
)
def audit(c, since=None, action=None, limit=1000, json=False, db_password_file=None, db=None):
    """The audit trail: who did what, when and from where, oldest first.

    Every server and command line sharing the history's database (--db) adds
    to it: runs triggered, cancelled, approved or rejected; tokens created or
    revoked; locks broken; gc; failed logins to the server. Entries are only
    ever added. No secret is ever in them (names, never values). The server
    shows the same at /audit and GET /api/audit, to admin tokens.
    """
    from ..store.audit import AuditLog, parse_since

    start = parse_since(since)
    entries = AuditLog(common.database(db, db_password_file)).entries(since=start, action=action, limit=int(limit))
    if json:
        from ..views import AuditView

        ui.print_json([AuditView(**e.to_dict()).model_dump() for e in entries])
        return
    from rich.table import Table

    table = Table(title="sshexec audit", title_justify="left")
    for col in ("when", "who", "from", "action", "target", "detail"):
        table.add_column(col, overflow="fold")
    for e in entries:
        detail = ", ".join(f"{k}={v}" for k, v in e.detail.items() if v not in (None, [], ""))
        table.add_row(_when(e.at), ui.safe(e.who), ui.safe(e.source), e.action, ui.safe(e.target or ""), ui.safe(common.short(detail, 80)))
    ui.console().print(table)
    if not entries:
        ui.info("no entries" + (f" since {_when(start)}" if start else ""))


TASKS = (audit,)
