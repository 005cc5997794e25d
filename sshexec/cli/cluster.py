"""The cluster's commands: `submit` (and `run --queue`), `nodes [drain|undrain NAME]`, `schedule add|list|remove`.

They work on the database alone (--db): the `sshexec serve` nodes sharing it do the rest.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from invoke import task

from ..errors import InputError
from . import common, ui
from .common import DB_HELP, HELP_JSON, optional_operands, positional
from .complete import option_values

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
HELP_RUNBOOK = "a runbook of the servers' --runbooks directory: its name (demo), or a file (runbooks/demo.yaml: checked here, queued by name)"


def _audit(database, action: str, target: str, detail: dict | None = None) -> None:
    """The change's entry in the audit trail (store/audit.py): this user, from this host. The change is made
    already: a database that fails just now costs a warning."""
    from ..store.audit import AuditLog, local_actor

    who, source = local_actor()
    AuditLog(database).try_record(action, who=who, source=source, target=target, detail=detail)


def runbook_name(runbook: str, var: list[str] | None) -> tuple[str, dict[str, str]]:
    """(the name the nodes know it by, the --var values): a file is read and checked here first."""
    from ..config.runbook import load_runbook
    from ..config.variables import parse_vars

    path = Path(runbook)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        rb = load_runbook(path)  # every problem of the file, now (exit 2)
        return path.stem, parse_vars(var or [], rb)
    if not NAME.fullmatch(runbook):
        raise InputError(f"{runbook!r} is neither a runbook file nor a runbook's name", hint="e.g. demo (the servers' runbooks/demo.yaml)")
    values = {}
    for pair in var or []:
        name, sep, value = pair.partition("=")
        if not sep:
            raise InputError(f"--var {name!r} needs a value: --var NAME=VALUE")
        values[name] = value
    return runbook, values


def queue_run(runbook: str, var, *, json: bool, db, db_password_file) -> str:
    from ..store.queue import depth, submit as put

    name, values = runbook_name(runbook, var)
    database = common.database(db, db_password_file)
    run_id = put(database, name, values, by=common.local_user())
    _audit(database, "run.trigger", run_id, {"runbook": name, "vars": sorted(values), "queued": True})
    if json:
        ui.print_json({"run_id": run_id, "runbook": name, "status": "queued"})
    else:
        print(run_id, flush=True)
        ui.info(f"queued run {run_id} of {name} ({depth(database)} waiting); the first server node with room takes it. Follow it: sshexec logs --follow {run_id}")
    return run_id


@task(positional=["runbook"], iterable=["var"], help={"runbook": HELP_RUNBOOK, "var": "NAME=VALUE (repeatable), as for run", "json": HELP_JSON, **DB_HELP})
def submit(c, runbook=None, var=None, json=False, db_password_file=None, db=None):
    """Queue a run for the server nodes; prints its id.

    The first node with room under its --task-cap claims it (oldest first) and
    runs it with its own inventory and its --runbooks directory's copy of the
    runbook. `sshexec runs` shows it queued, then running; `sshexec logs
    --follow RUN_ID` follows it from any machine. Same as `sshexec run --queue`.
    """
    queue_run(positional(runbook, "the runbook", "sshexec submit RUNBOOK [--var NAME=VALUE]..."), var, json=json, db=db, db_password_file=db_password_file)


@option_values(action=("drain", "undrain"))
@optional_operands("action", "name")
@task(positional=["action", "name"], help={"action": "drain | undrain (none: list the nodes)", "name": "the node", "json": HELP_JSON, **DB_HELP})
def nodes(c, action=None, name=None, json=False, db_password_file=None, db=None):
    """The server nodes sharing the database: check-ins, runs, drain.

    `nodes drain NAME` makes that node finish its runs and claim no new ones;
    its /health then answers 503, so a load balancer sends it nothing.
    `nodes undrain NAME` lets it claim runs again. A node that stopped
    checking in for its node_stale is shown lost, and its runs interrupted.
    """
    from ..store import cluster

    database = common.database(db, db_password_file)
    if action:
        if action not in ("drain", "undrain"):
            raise InputError(f"unknown nodes action {action!r}: drain or undrain")
        target = positional(name, "the node's name", f"sshexec nodes {action} NAME")
        if not cluster.set_draining(database, target, action == "drain"):
            raise InputError(f"no node named {target!r}", hint="see sshexec nodes")
        _audit(database, f"node.{action}", target)
        ui.info(f"node {target}: {'draining: it finishes its runs and claims no new ones' if action == 'drain' else 'claims runs again'}")
        return
    found = cluster.list_nodes(database)
    if json:
        from ..views import NodeView

        ui.print_json([NodeView(**n.to_dict()).model_dump() for n in found])
        return
    if not found:
        ui.info("no server node has checked in to this database (start one: sshexec serve --db URL)")
        return
    from rich.table import Table

    table = Table(title="sshexec nodes", title_justify="left")
    for col in ("node", "state", "last seen", "runs", "cap", "host"):
        table.add_column(col)
    now = time.time()
    for n in found:
        state = n.state + (", draining" if n.draining and n.state == "up" else "") + (", maintenance" if n.maintenance else "")
        table.add_row(ui.safe(n.name), state, f"{now - n.last_seen:.0f} s ago", str(n.running), str(n.task_cap), ui.safe(f"{n.host} pid {n.pid}"))
    ui.console().print(table)


@option_values(action=("add", "list", "remove"))
@optional_operands("action", "name")
@task(
    positional=["action", "name"], iterable=["var"],
    help={
        "action": "add | list | remove", "name": "the schedule's name", "cron": "add: a cron expression, UTC, e.g. '*/5 * * * *' (a 6th field: seconds)",
        "runbook": "add: " + HELP_RUNBOOK, "var": "add: NAME=VALUE (repeatable)", "json": HELP_JSON, **DB_HELP,
    },
)  # fmt: skip
def schedule(c, action=None, name=None, cron=None, runbook=None, var=None, json=False, db_password_file=None, db=None):
    """Runbooks queued on a cron expression, once per tick.

    `schedule add NAME --cron EXPR --runbook RUNBOOK [--var N=V]...`,
    `schedule list`, `schedule remove NAME`. Each tick queues one run, even
    with several nodes (the tick is a row only one of them can write). Ticks
    missed while every node was down are not made up: the newest of them
    fires once when a node is back, the older ones are skipped.
    """
    from ..store import schedules

    action = positional(action, "the action", "sshexec schedule add|list|remove [NAME]")
    database = common.database(db, db_password_file)
    if action == "add":
        sname = positional(name, "the schedule's name", "sshexec schedule add NAME --cron EXPR --runbook RUNBOOK")
        if not cron or not runbook:
            raise InputError("schedule add needs --cron EXPR and --runbook RUNBOOK", hint="e.g. sshexec schedule add nightly --cron '0 3 * * *' --runbook deploy")
        rb, values = runbook_name(runbook, var)
        s = schedules.add(database, sname, cron, rb, values, by=common.local_user())
        _audit(database, "schedule.add", s.name, {"cron": s.cron, "runbook": rb, "vars": sorted(values)})
        if json:
            ui.print_json(s.to_dict())
        else:
            ui.info(f"schedule {s.name}: {rb} at '{s.cron}' (UTC); next tick {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(s.next_tick()))} UTC")
    elif action == "list":
        found = schedules.list_schedules(database)
        if json:
            ui.print_json([s.to_dict() for s in found])
            return
        from rich.table import Table

        table = Table(title="sshexec schedules", title_justify="left")
        for col in ("name", "cron (UTC)", "runbook", "last tick", "next tick"):
            table.add_column(col)
        fmt = lambda t: time.strftime("%m-%d %H:%M:%S", time.gmtime(t)) if t else "-"  # noqa: E731
        for s in found:
            table.add_row(ui.safe(s.name), ui.safe(s.cron), ui.safe(s.runbook), fmt(s.last_tick), fmt(s.next_tick()))
        ui.console().print(table)
    elif action == "remove":
        sname = positional(name, "the schedule's name", "sshexec schedule remove NAME")
        if not schedules.remove(database, sname):
            raise InputError(f"no schedule named {sname!r}", hint="see sshexec schedule list")
        _audit(database, "schedule.remove", sname)
        ui.info(f"schedule {sname} removed")
    else:
        raise InputError(f"unknown schedule action {action!r}: add, list or remove")


TASKS = (submit, nodes, schedule)
