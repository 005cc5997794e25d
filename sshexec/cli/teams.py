"""What teams need around runs: `sshexec audit` (who did what), `sshexec notify` (where run events go),
`sshexec approve` (a decision for a run that waits).

Each command reads or writes the history's database (--db), the one every
server and command line sharing it sees.
"""

from __future__ import annotations

import threading
import time

from invoke import task

from . import common, ui
from .common import DB_HELP, HELP_JSON, optional_operands, positional
from .complete import option_values

EVENT_NAMES = ("run.succeeded", "run.failed", "run.cancelled", "run.waiting")


# -- around `sshexec run` (cli/runs.py): its notifications' first try, and its terminal's approval prompt --------

NOTIFY_WAIT = 5.0  # seconds `sshexec run` gives its run's notifications after the run ended, at most


def send_now(history, run_id: str) -> threading.Thread:
    """Send what is due of `run_id`'s notifications, once, on a thread of its own: the run never waits for it
    (the first try of `sshexec run`'s own notifications; store/notify.py queued them; retries are a server's)."""
    from ..ops.notify import Notifier

    def send() -> None:
        try:
            Notifier(history.db, timeout=NOTIFY_WAIT).send_due(run_id=run_id)
        except Exception as exc:  # noqa: BLE001 - the run is recorded; a notification is never worth its exit code
            ui.warn(f"notifications of run {run_id}: {getattr(exc, 'message', exc)}")

    thread = threading.Thread(target=send, name="notify", daemon=True)
    thread.start()
    return thread


def approval_prompt(history, asked) -> None:
    """A run on a terminal may be approved there too: a question on a thread of its own (the run waits in its own
    loop and takes whichever decision comes first: this one, `sshexec approve`, or the server's)."""
    from ..store.approvals import AlreadyDecided, ApprovalStore
    from ..store.audit import AuditLog, local_actor

    def ask() -> None:
        try:
            answer = input(f"Approve step {asked.step}? [y/n, then a comment if you like] ").strip()
        except (EOFError, OSError):
            return
        word, _, comment = answer.partition(" ")
        if word.lower() not in ("y", "yes", "n", "no"):
            ui.warn("not decided here (answer y or n): the run still waits; use sshexec approve")
            return
        decision = "approved" if word.lower() in ("y", "yes") else "rejected"
        user, source = local_actor()
        try:
            ApprovalStore(history.db).decide(asked.run_id, decision, by=user, comment=comment.strip() or None, step=asked.step)
            AuditLog(history.db).try_record("run.approve" if decision == "approved" else "run.reject", who=user, source=source + " (prompt)", target=asked.run_id, detail={"step": asked.step, "commented": bool(comment.strip())})
        except AlreadyDecided as exc:
            ui.info(str(exc))
        except Exception as exc:  # noqa: BLE001 - the prompt is a convenience: the run still waits for another decision
            ui.warn(f"the decision could not be recorded: {getattr(exc, 'message', exc)}")

    threading.Thread(target=ask, name="approval-prompt", daemon=True).start()


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


def _secret(secret_env: str | None, name: str) -> str:
    """The endpoint's secret: from the variable --secret-env names, else asked at the terminal; never from argv."""
    import getpass
    import os
    import sys

    from ..errors import InputError

    if secret_env:
        value = os.environ.get(secret_env)
        if not value:
            raise InputError(f"--secret-env {secret_env}: that environment variable is not set (or empty)", field="--secret-env")
        return value
    if not sys.stdin.isatty():
        raise InputError(f"notification {name} needs a secret: name the environment variable that holds it with --secret-env VAR", field="--secret-env")
    return getpass.getpass(f"secret of notification {name} (signs each delivery; not shown): ")


@option_values(action=("add", "list", "remove", "log"), events=EVENT_NAMES)
@optional_operands("name")
@task(
    positional=["action", "name"],
    help={
        "action": "add | list | remove | log",
        "name": "the endpoint's name (add, remove)",
        "url": "add: where to POST (http:// or https://)",
        "events": "add: comma-separated, of run.succeeded, run.failed, run.cancelled, run.waiting",
        "secret-env": "add: the environment variable holding the HMAC secret (else asked at the terminal; never on the command line)",
        "attempts": "add: tries in all before a delivery is failed (default 5)",
        "backoff": "add: the wait before the second try (default 2s); each next wait doubles",
        "run": "log: only this run's deliveries",
        "limit": "log: the N latest deliveries (default 50)",
        "json": HELP_JSON,
        **DB_HELP,
    },
)
def notify(c, action=None, name=None, url=None, events=None, secret_env=None, attempts=5, backoff="2s", run=None, limit=50, json=False, db_password_file=None, db=None):
    """Notifications: run events POSTed to URLs, signed; and their log.

    `notify add NAME --url URL --events run.failed,run.waiting --secret-env VAR`
    sends each event as JSON with X-Sshexec-Signature: sha256=HMAC of the body
    (the secret comes from VAR, or is asked at the terminal). A failed delivery
    (no answer, or a status other than 2xx) is tried again with backoff, up to
    --attempts. Every `sshexec serve` sharing the database (--db) sends them,
    and `sshexec run` sends its own run's once as it ends. `notify log` shows
    each delivery with every try; the server shows it at /notifications.
    """
    from ..errors import InputError
    from ..store.notify import NotifyStore, check_endpoint

    action = positional(action, "the action", "sshexec notify add|list|remove|log [NAME]")
    store = NotifyStore(common.database(db, db_password_file))
    if action == "add":
        name = positional(name, "the endpoint's name", "sshexec notify add NAME --url URL --events E[,E] --secret-env VAR")
        if not url or not events:
            raise InputError("notify add needs --url and --events", hint="sshexec notify add NAME --url URL --events run.failed,run.waiting --secret-env VAR")
        given = dict(max_attempts=int(attempts), backoff=common.seconds(backoff, "--backoff"))
        check_endpoint(name, url, events, "-" * 64, **given)  # everything else is right before the secret is asked for
        ep = check_endpoint(name, url, events, _secret(secret_env, name), **given)
        store.save(ep)
        common.audit("notify.add", target=name, detail={"events": list(ep.events)}, db=db, password_file=db_password_file)  # no URL: a webhook URL may be a secret itself
        ui.info(f"notification {name}: {', '.join(ep.events)} to {url}")
    elif action == "remove":
        name = positional(name, "the endpoint's name", "sshexec notify remove NAME")
        store.remove(name)
        common.audit("notify.remove", target=name, db=db, password_file=db_password_file)
        ui.info(f"notification {name} removed")
    elif action == "list":
        found = [e.to_dict() for e in store.endpoints()]
        if json:
            ui.print_json(found)
            return
        _table("sshexec notify list", ("name", "url", "events", "attempts", "backoff", "from"),
               [(e["name"], e["url"], ", ".join(e["events"]), str(e["max_attempts"]), f"{e['backoff']:g}s", e["origin"]) for e in found])  # fmt: skip
    elif action == "log":
        found = store.log(run_id=run, limit=int(limit))
        if json:
            ui.print_json(found)
            return
        rows = []
        for d in found:
            tries = " · ".join(f"#{t['attempt']} {t['status_code'] or t['error']}" for t in d["tries"])
            rows.append((str(d["id"]), _when(d["created"]), d["endpoint"], d["event"], d["run_id"] or "", d["state"], tries))
        _table("sshexec notify log", ("id", "when", "endpoint", "event", "run", "state", "tries"), rows)
    else:
        raise InputError(f"unknown notify action {action!r}: add, list, remove or log")


def _table(title: str, columns, rows) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*(ui.safe(v) for v in row))
    ui.console().print(table)


def apply_server_config(path: str, database) -> None:
    """`serve --config FILE`: its `notifications:` become the endpoints of origin "config" (the file wins over the database for
    its names; endpoints of `notify add` stay). InputError (exit 2) naming the file and field."""
    import os

    import yaml

    from ..errors import InputError
    from ..store.notify import NotifyStore, check_endpoint

    try:
        data = yaml.safe_load(open(path, encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"--config {path}: {exc}", field="--config") from None
    if not isinstance(data, dict) or set(data) - {"notifications"}:
        raise InputError(f"--config {path}: the file holds a mapping with notifications: (a list)", field="--config")
    store = NotifyStore(database)
    for i, entry in enumerate(data.get("notifications") or []):
        where = f"{path}: notifications[{i}]"
        known = {"name", "url", "events", "secret_env", "attempts", "backoff"}
        if not isinstance(entry, dict) or set(entry) - known:
            extra = sorted(set(entry) - known) if isinstance(entry, dict) else []
            raise InputError(f"{where}: keys are {', '.join(sorted(known))}" + (f"; unknown: {', '.join(extra)}" if extra else ""), field=where)
        env = entry.get("secret_env")
        if not env or not os.environ.get(env):
            raise InputError(f"{where}: secret_env names the environment variable holding the secret, and it must be set", field=f"{where}.secret_env")
        ep = check_endpoint(str(entry.get("name", "")), entry.get("url", ""), entry.get("events"), os.environ[env],
                            max_attempts=int(entry.get("attempts", 5)), backoff=common.seconds(str(entry.get("backoff", "2s")), f"{where}.backoff"), where=where)  # fmt: skip
        store.save(ep, origin="config")


@task(
    positional=["run_id"],
    help={"run_id": "the waiting run (its id, or a unique prefix)", "reject": "reject instead of approve: the step fails (exit 1)", "comment": "recorded with the decision and shown in the run's log", "json": HELP_JSON, **DB_HELP},
)
def approve(c, run_id=None, reject=False, comment=None, json=False, db_password_file=None, db=None):
    """Approve (or --reject) the approval step a run waits on.

    The decision goes into the history's database (--db), where the waiting
    run sees it within a second, wherever it runs: this machine, another, or a
    server. Who decided (this machine's user) and the comment are recorded with
    the run and in its log. Approving is for whoever may write the history's
    database; the server's pages and POST /api/runs/ID/approval need a token of
    the step's role. Exit 2 if the run waits on nothing (or was decided already).
    """
    from ..errors import InputError
    from ..store.approvals import AlreadyDecided, ApprovalStore
    from ..store.audit import local_actor

    run_id = positional(run_id, "the run id", "sshexec approve RUN_ID [--reject] [--comment TEXT]")
    history = common.history(db, db_password_file)
    rec = history.lookup(run_id, field="RUN_ID")
    store = ApprovalStore(history.db)
    user, _ = local_actor()
    decision = "rejected" if reject else "approved"
    try:
        decided = store.decide(rec.id, decision, by=user, comment=comment)
    except LookupError as exc:
        raise InputError(str(exc), hint="sshexec runs --status waiting") from None
    except AlreadyDecided as exc:
        raise InputError(str(exc)) from None
    common.audit("run.approve" if not reject else "run.reject", target=rec.id, detail={"step": decided.step, "commented": bool(comment)}, db=db, password_file=db_password_file)
    if json:
        ui.print_json(decided.to_dict())
    else:
        ui.info(f"run {rec.id}: step {decided.step} {decision} by {user}" + (f" ({comment})" if comment else ""))


TASKS = (audit, notify, approve)
