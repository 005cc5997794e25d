"""The history: `sshexec runs`, `logs` and `artifact` read it; `history prune` trims it; `db` upgrades its database."""

from __future__ import annotations

import os
import sys
import time

from invoke import Exit, task

from ..core.status import RUN_STATUSES
from ..errors import InputError
from . import common, ui
from .complete import option_values
from .common import DB_HELP, HELP_JSON, optional_operands, positional


@option_values(action=("upgrade", "status"))
@optional_operands("action")
@task(positional=["action"], help={"action": "upgrade (default) | status", "json": HELP_JSON, **DB_HELP})
def db(c, action=None, json=False, db_password_file=None, db=None):
    """The history's database: upgrade its schema, or show its revision.

    `db upgrade` brings the database to this sshexec's schema: it creates the
    tables in an empty one, and upgrades one made by an older sshexec in place
    (a history.db of an sshexec before the database: its logs, artifacts and
    tokens.json are copied in; the files are left as they were). Two upgrades at
    once take turns. A SQLite history is upgraded by any command that opens it;
    PostgreSQL, shared by several machines, only by this command.
    """
    from ..store.db import Database
    from ..store.migrate import known_revisions
    from ..store.schema import REVISION

    action = action or "upgrade"
    if action not in ("upgrade", "status"):
        raise InputError(f"unknown db action {action!r}: upgrade or status")
    database = Database(db, password_file=db_password_file)
    if action == "status":
        have = database.revision()
        state = "up to date" if have == REVISION else "needs sshexec db upgrade" if have is None or have in known_revisions() else "made by a newer sshexec"
        if json:
            ui.print_json({"url": database.url, "revision": have, "wanted": REVISION, "state": state})
        else:
            ui.info(f"database {database.url}: revision {have or '(none)'}; this sshexec needs {REVISION}: {state}")
        return
    database.check_known(database.revision())
    before, after = database.upgrade()
    if json:
        ui.print_json({"url": database.url, "before": before, "after": after})
    elif before == after:
        ui.info(f"database {database.url}: already at revision {after}")
    else:
        ui.info(f"database {database.url}: upgraded from revision {before or '(none)'} to {after}")


@option_values(action=("prune", "retention"))
@optional_operands("action")
@task(
    positional=["action"],
    help={
        "action": "prune | retention",
        "older-than": "delete runs that started more than DAYS days ago (required; 0 for any age)",
        "keep": "keep the N newest runs of each runbook, however old (default 0)",
        "dry-run": "show what would be deleted; delete nothing",
        "every": "retention: how often the maintenance node prunes (default 1h)",
        "off": "retention: no automatic prune any more",
        "json": HELP_JSON,
        **DB_HELP,
    },
)
def history(c, action=None, older_than=None, keep=0, dry_run=False, json=False, db_password_file=None, db=None, every=None, off=False):
    """Retention: delete old runs with their logs and artifacts.

    `history prune --older-than DAYS [--keep N]` deletes the runs that started
    more than DAYS days ago, except the N newest of each runbook, with their
    steps, log lines and artifacts. Runs still going are never deleted. The
    rest of the history is left as it was. --dry-run shows what would go.

    `history retention --older-than DAYS [--keep N] [--every 1h]` stores the
    same as the database's retention setting: the server node that holds the
    cluster's maintenance lease (one at a time) prunes so every hour.
    `history retention` shows it; `--off` removes it.
    """
    from ..store.prune import prune

    action = positional(action, "the action", "sshexec history prune --older-than DAYS [--keep N]")
    if action == "retention":
        return _retention(older_than, keep, every, off, json, db, db_password_file)
    if action != "prune":
        raise InputError(f"unknown history action {action!r}: prune or retention")
    days, keep_n = _prune_args(older_than, keep)
    out = prune(common.history(db, db_password_file), older_than=days, keep=keep_n, dry_run=dry_run)
    if json:
        ui.print_json(out.to_dict())
        return
    from ..core.units import human_size

    verb = "would delete" if dry_run else "deleted"
    kept = f", keeping the {keep_n} newest of each runbook" if keep_n else ""
    ui.info(
        f"{verb} {len(out.runs)} runs that started more than {days:g} days ago{kept}: "
        f"{human_size(out.log_bytes)} of logs, {out.artifacts} artifacts ({human_size(out.artifact_bytes)})"
    )
    for rid in out.runs[:20] if dry_run else ():
        ui.info(f"  {rid}")
    if dry_run and len(out.runs) > 20:
        ui.info(f"  … and {len(out.runs) - 20} more (--json lists them all)")


def _prune_args(older_than, keep) -> tuple[float, int]:
    if older_than in (None, ""):
        raise InputError("--older-than DAYS is missing: sshexec history prune --older-than DAYS [--keep N]", hint="e.g. --older-than 30")
    try:
        days = float(older_than)
    except ValueError:
        raise InputError(f"--older-than must be a number of days, not {older_than!r}") from None
    if not 0 <= days < float("inf"):
        raise InputError(f"--older-than must be 0 or more days, not {older_than}")
    try:
        keep_n = int(keep)
    except (TypeError, ValueError):
        raise InputError(f"--keep must be a whole number of runs, not {keep!r}") from None
    if keep_n < 0:
        raise InputError(f"--keep must be 0 or more, not {keep_n}")
    return days, keep_n


def _retention(older_than, keep, every, off, json, db, db_password_file) -> None:
    """`history retention`: show, set or remove the cluster's retention setting (store/cluster.py)."""
    from ..store.cluster import get_setting, put_setting

    database = common.database(db, db_password_file)
    if off:
        put_setting(database, "retention", None)
    elif older_than not in (None, ""):
        days, keep_n = _prune_args(older_than, keep)
        period = common.seconds(every, "--every") if every else 3600.0
        if period < 1:
            raise InputError(f"--every must be at least 1 s, not {every}")
        put_setting(database, "retention", {"older_than": days, "keep": keep_n, "every": period})
    setting = get_setting(database, "retention")
    if json:
        ui.print_json({"retention": setting})
    elif setting is None:
        ui.info("no retention: runs are kept until `sshexec history prune` (set one: sshexec history retention --older-than DAYS)")
    else:
        kept = f", keeping the {setting['keep']} newest of each runbook" if setting.get("keep") else ""
        ui.info(f"retention: runs older than {setting['older_than']:g} days are deleted{kept}, every {setting['every']:g} s, by the node holding the maintenance lease")


@task(
    positional=["run_id", "artifact"],
    help={
        "run_id": "a run id, or a unique prefix of one",
        "artifact": "WORKER/NAME, as sshexec logs lists them",
        "output": "write it to this file (default: ./NAME; - for stdout)",
        "force": "overwrite --output if it exists",
        **DB_HELP,
    },
)
def artifact(c, run_id=None, artifact=None, output=None, force=False, db_password_file=None, db=None):
    """Fetch an artifact of a run from the history, a chunk at a time.

    Writes WORKER/NAME of RUN_ID to ./NAME (never over an existing file
    unless --force), or to --output; `--output -` writes it to stdout.
    """
    from ..store import artifacts as stored
    usage = "sshexec artifact RUN_ID WORKER/NAME [--output FILE]"
    h = common.history(db, db_password_file)
    rec = pick_run(h, positional(run_id, "the run id", usage))
    worker, sep, name = positional(artifact, "the artifact", usage).partition("/")
    if not sep or not worker or not name:
        raise InputError(f"artifact {artifact!r}: write it WORKER/NAME", hint=f"sshexec logs {rec.id} lists them")
    found = stored.artifact(h.db, rec.id, worker, name)
    if found is None:
        raise InputError(f"run {rec.id} has no artifact {worker}/{name}", hint=f"sshexec logs {rec.id} lists them")
    if found["chunks"] is None:
        raise InputError(f"artifact {worker}/{name} of run {rec.id}: its file was gone when the history was upgraded; only its record is kept")
    target = output or name
    if target == "-":
        out = sys.stdout.buffer
        for data in stored.chunks(h.db, rec.id, worker, name, found["chunks"]):
            out.write(data)
        out.flush()
        return
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(target, flags, 0o600)
    except FileExistsError:
        raise InputError(f"{target} exists already", hint="--force overwrites it, --output names another file") from None
    except OSError as exc:
        raise InputError(f"cannot write {target}: {exc.strerror}", field="--output") from None
    with os.fdopen(fd, "wb") as fh:
        for data in stored.chunks(h.db, rec.id, worker, name, found["chunks"]):
            fh.write(data)
    ui.info(f"artifact {worker}/{name} of run {rec.id}: {found['size']} bytes → {target}")


@option_values(status=RUN_STATUSES)
@task(
    help={
        "limit": "how many runs (default 20)",
        "status": "only runs with this status: " + ", ".join(RUN_STATUSES),
        "runbook": "only runs of this runbook (its name:)",
        "json": "print JSON",
        **DB_HELP,
    }
)
def runs(c, limit=20, status=None, runbook=None, json=False, db_password_file=None, db=None):
    """The run history, newest first.

    Every run recorded in the history's database (--db): with PostgreSQL,
    those of every machine and every operator that share it.
    """
    from ..core.status import check_run_status
    from ..views import RunSummary
    from .tables import Col, duration, show

    escape = ui.safe
    wanted = check_run_status(status or None)  # a bad status is exit 2 before the database is opened
    records = common.history(db, db_password_file).runs(int(limit), status=wanted, runbook=runbook)
    if json:
        ui.print_json([RunSummary.of(r).model_dump() for r in records])
        return
    # The run id whole (sshexec logs RUN_ID); the runbook and the message cut to the room left, on one line.
    cols = (Col("run id"), Col("runbook", flex=2), Col("started", drop=1), Col("time", justify="right", drop=2), Col("status"), Col("message", flex=3, drop=3))
    rows = []
    for r in records:
        started = time.strftime("%m-%d %H:%M", time.localtime(r.started))
        took = duration(r.finished - r.started if r.finished else None)
        rows.append([r.id, escape(r.runbook), started, took, r.status, escape(common.short(r.message or "", 200))])
    show("sshexec runs", cols, rows)


@optional_operands("run_id")
@task(
    positional=["run_id"],
    help={
        "run_id": "a run id, or a unique prefix of one (default: the latest run)",
        "json": "print JSON (log included)",
        "follow": "print the log as it grows, until the run ends; exit with the run's exit code",
        **DB_HELP,
    },
)
def logs(c, run_id=None, json=False, follow=False, db_password_file=None, db=None):
    """One run's stored (masked) log, steps, outputs and artifacts.

    Without RUN_ID, the latest run: the first that `sshexec runs` lists. With
    --follow, a run that is still going (started here or by another sshexec
    process or machine that shares the database, `sshexec serve` included) is
    tailed live; the command ends when the run ends, with the run's exit code.
    Ctrl-C stops following, not the run.
    """
    from ..step.output import neutralise
    from ..store.logtail import LogTail

    escape = ui.safe
    if json and follow:
        raise InputError("--json and --follow do not go together", hint="follow the run, then ask for its JSON: sshexec logs RUN_ID --json")
    h = common.history(db, db_password_file)
    rec = pick_run(h, run_id)
    rid = rec.id
    if json:
        from ..views import RunDetail, RunWithLog

        text = h.log_text(rid).decode("utf-8", "replace")
        ui.print_json(RunWithLog(**RunDetail.load(h, rec).model_dump(), log=text).model_dump())
        return
    c_ = ui.console()
    retried = f" · a retry of {rec.retry_of}" if rec.retry_of else ""
    ui.line(f"run [bold]{rec.id}[/] · {escape(rec.runbook)} · {rec.status}" + ("" if follow and rec.status in ("running", "waiting") else f" (exit {rec.exit_code})") + retried, con=c_)
    c_.file.flush()
    out = sys.stdout.buffer
    show = neutralise if sys.stdout.isatty() else (lambda chunk: chunk)
    with LogTail.for_run(h, rid) as tail:
        if follow:
            for chunk in tail.follow():
                out.write(show(chunk))
                out.flush()
            rec = h.run(rid)
        else:
            tail.finished = lambda: True  # the log as it is now, even if the run goes on
            while chunk := tail.poll():
                out.write(show(chunk))
    out.flush()
    for s in h.steps(rid):
        tries = f" attempt {s['attempt']}/{s['attempts']}" if s["attempts"] > 1 else ""
        carried = f" carried from {s['carried_from']}" if s["carried_from"] else ""
        ui.line(f"{escape(s['step'])} on {escape(s['worker'])}: {s['status']}{tries}{carried} (exit {s['exit_code']}) {escape(s['message'] or '')}", con=c_)
        if s.get("image_digest") or s.get("bundle_hash"):
            image, bundle = s.get("image_digest") or "(no registry digest)", f"bundle sha256:{(s.get('bundle_hash') or '?')[:16]}"
            if not c_.is_terminal or len(image) + len(bundle) + 11 <= c_.width:
                c_.print(f"  image {escape(image)} · {bundle}", soft_wrap=True)
            else:  # a narrow terminal: the image's name, its digest and the bundle each whole on a line of their own
                name, at, digest = image.partition("@")
                c_.print(f"  image {escape(name)}" + (f"\n        @{escape(digest)}" if at else "") + f"\n  {bundle}", soft_wrap=True)
        for k, v in s["outputs"].items():
            ui.line(f"  {escape(s['step'])}.{escape(k)} = {escape(common.short(v))}", hang=4, con=c_)
    for a in h.artifacts(rid):
        lead = f"artifact {escape(a['worker'])}/{escape(a['name'])} ({a['size']} bytes) →"
        if a["stored"]:
            ui.copyable(lead, escape(common.repeat_options(f"sshexec artifact {rid} {a['worker']}/{a['name']}")), c_)  # with the --db given, if any
        else:
            ui.line(f"{lead} not stored (its file was gone when the history was upgraded)", con=c_)
    if follow:
        c_.print(f"{rec.status} (exit {rec.exit_code}) · run id [bold]{rec.id}[/]")
        code = rec.exit_code if rec.exit_code is not None else 3  # interrupted: its process died
        if code:
            raise Exit(code=code)


def pick_run(h, run_id: str | None):
    """The run `run_id` names (a whole id or a unique prefix), or the latest run when it is empty."""
    if not run_id:
        latest = h.runs(1)
        if not latest:
            raise InputError("no run in the history yet", hint="sshexec run RUNBOOK records one")
        return latest[0]
    return h.lookup(positional(run_id, "the run id", "sshexec logs [RUN_ID] (see sshexec runs)"))


TASKS = (runs, logs, artifact, history, db)
