"""`sshexec locks`, `unlock` and `gc`: what runs hold on the workers, and what dead runs left there."""

from __future__ import annotations

import sys

from invoke import Exit, task

from ..errors import InputError
from . import common, ui
from .common import HELP_INVENTORY, HELP_JSON, HELP_PARALLEL, HELP_POOL, HELP_WORKER, load_inventory, positional


def _each(workers, fn, at_once):
    """fn(worker) for every worker at once: (worker, result or the exception it raised), in order."""
    from ..core.fanout import fan_out
    from ..errors import SshexecError

    results = fan_out(workers, fn, parallel=common.parallel(at_once))
    for r in results.values():
        if isinstance(r, BaseException) and not isinstance(r, SshexecError):
            raise r  # a bug or Ctrl-C, not a worker's problem
    return [(w, results[w.name]) for w in workers]


@task(help={"pool": HELP_POOL, "worker": HELP_WORKER, "inventory": HELP_INVENTORY, "json": HELP_JSON, "parallel": HELP_PARALLEL})
def locks(c, pool=None, worker=None, inventory=None, json=False, parallel=0):
    """The locks and slots held on each worker, with holder and age.

    Locks come from `lock:` in runbooks; slots are the step containers running
    on a worker with `max_steps`. A lock whose holder's heartbeat is older
    than its lock_stale is shown as stale: the next run takes it over.
    Jump hosts (workers in no pool) are left out unless named with --worker.
    Exit 3 if a worker could not be asked.
    """
    from ..ops.locks import list_held

    found = _each(common.docker_workers(load_inventory(inventory), pool, worker), list_held, parallel)
    failed = [r for _, r in found if isinstance(r, BaseException)]
    if json:
        ui.print_json({"workers": [r.to_dict() if not isinstance(r, BaseException) else {"worker": w.name, "error": r.to_dict()} for w, r in found]})
    else:
        _locks_table(found)
    if failed:
        raise Exit(code=3)


def _locks_table(found) -> None:
    from ..worker.coord import age
    from .tables import Col, cell_width, show

    escape = ui.safe
    # The lock's name and its holder (a run id) whole; its state and operator cut to the room left,
    # and then said in full below the table. A slot is named "slot N (used/max)".
    cols = (Col("worker"), Col("name"), Col("holder"), Col("since", drop=1), Col("state", flex=1), Col("operator", flex=2, drop=2))
    rows, full = [], []
    problems = []

    def ago(t) -> str:
        return "?" if t is None else f"{age(h.now - t)} ago"

    for w, h in found:
        if isinstance(h, BaseException):
            rows.append([escape(w.name), "–", "–", "–", "[red]unreachable[/]", "–"])
            problems.append(h)
            continue
        used = f"{h.slots_used}/{h.max_steps}" if h.max_steps else f"{h.slots_used}/–"
        if not h.locks and not h.slots:
            rows.append([escape(w.name), "–", "", "", f"[dim]nothing held · slots {used}[/]", ""])
        for lock in h.locks:
            o = lock.owner
            beat = f"beat {age(h.now - lock.beat.since)} ago" if lock.beat and lock.beat.since is not None else "beat unreadable" if lock.beat_unknown else "beat gone"
            state = f"[yellow]stale[/] · {beat} (older than {lock.beat.stale}s)" if lock.stale and lock.beat else f"[yellow]stale[/] · {beat}" if lock.stale else f"held · {beat}"
            rows.append([escape(w.name), escape(lock.lock), escape(o.run if o else "?"), ago(o.since if o else None), state, escape(f"{o.operator} pid {o.pid}" if o else "?")])
        for s in h.slots:
            o = s.owner
            state = "running" if s.alive else "[dim]free (its step ended)[/]"
            rows.append([escape(w.name), f"slot {s.index} ({used})", escape(o.run if o else "?"), ago(o.since if o else None), state,
                         escape(f"{o.operator} pid {o.pid}" if o else "?")])  # fmt: skip
    sizes = show("sshexec locks", cols, rows)
    for row in rows:
        if row[2] not in ("", "–") and (cell_width(row[4]) > sizes.get("state", 0) or cell_width(row[5]) > sizes.get("operator", 0)):
            ui.line(f"  {row[0]} {row[1]}: run {row[2]} of {row[5]}; {row[4]}", hang=4)
    for p in problems:
        ui.line(f"[red]✗[/] {escape(p.message)}", hang=2)


@task(
    positional=["name"],
    help={
        "name": "the lock's name, as in the runbook's lock:",
        "worker": "the worker where to break it (required)",
        "yes": "do not ask: break it",
        "inventory": HELP_INVENTORY,
        "json": HELP_JSON,
    },
)
def unlock(c, name=None, worker=None, yes=False, inventory=None, json=False):
    """Break a lock on a worker, after showing its holder and confirming.

    For a lock whose run is gone and that you will not wait for (a holder
    silent for more than its lock_stale is taken over by the next run anyway).
    It is broken only if the run you confirmed still holds it (a lock shown
    as held by nobody: only if it is still empty). Without a terminal,
    --yes is required (exit 2 otherwise).
    """
    from ..config.runbook import check_lock_name
    from ..ops.locks import break_lock, list_held

    name = positional(name, "the lock name", "sshexec unlock NAME --worker W [--yes]")
    try:
        check_lock_name(name)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if not worker:
        raise InputError("unlock needs --worker W: locks are held per worker (see sshexec locks)")
    w = load_inventory(inventory).worker(worker)
    if not yes and not sys.stdin.isatty():
        raise InputError("not confirmed: run with --yes to break the lock without asking")
    held = list_held(w)
    lock = next((h for h in held.locks if h.lock == name), None)
    if lock is None:
        if json:
            ui.print_json({"worker": w.name, "lock": name, "broken": False, "held": False})
        else:
            ui.info(f"lock {name} is not held on {w.name}")
        return
    if not json:
        ui.info(f"lock {name} on {w.name} is held by {lock.describe()}" + (" (stale)" if lock.stale else ""))
    if not yes:
        answer = input(f"Break lock {name} on {w.name}? [y/N] ").strip().lower()
        if answer not in ("y", "yes"):
            raise InputError(f"not confirmed: lock {name} on {w.name} stays")
    # Only what the person confirmed: that run, or an empty lock that is still empty.
    said, owner = break_lock(w, name, lock.owner.run if lock.owner else "")
    if said == "broken":
        common.audit("lock.unlock", target=f"{w.name}/{name}", detail={"worker": w.name, "lock": name, "holder": owner.run if owner else None})
    if said == "changed":
        raise InputError(f"lock {name} on {w.name} changed hands meanwhile: now held by {owner.describe() if owner else '?'}; nothing was broken", hint="run sshexec unlock again")
    if json:
        ui.print_json({"worker": w.name, "lock": name, "broken": said == "broken", "held": said == "broken", "holder": owner.run if owner else None})
    elif said == "broken":
        ui.info(f"lock {name} on {w.name} broken (it was held by run {owner.run if owner else '?'})")
    else:
        ui.info(f"lock {name} on {w.name} had been given back meanwhile")


@task(
    help={
        "pool": HELP_POOL,
        "worker": HELP_WORKER,
        "dry-run": "only list what would be removed",
        "images": "also remove images sshexec pulled, least recently used first (with --keep-free or --older-than)",
        "keep-free": "remove images until the worker's disk has this much free, e.g. 20G",
        "older-than": "remove images not used by a step for that many days",
        "inventory": HELP_INVENTORY,
        "json": HELP_JSON,
        "parallel": HELP_PARALLEL,
    }
)
def gc(c, pool=None, worker=None, dry_run=False, images=False, keep_free=None, older_than=None, inventory=None, json=False, parallel=0):
    """Remove what dead runs left on workers; with --images, old images.

    A run is dead once its heartbeat on the worker is older than its
    lock_stale (plus a minute); a live run is never touched. Removed: its
    containers, its step directories and registry credentials, stale
    heartbeats, and executor versions unused for 30 days. --images removes
    images that sshexec pulled (never those someone else did, nor one a
    container uses), least recently used first. Jump hosts (workers in no
    pool) are left out unless named with --worker. Exit 3 if a worker failed.
    """
    from ..ops.gc import check_policy, gc_worker

    policy = check_policy(images, keep_free, older_than)
    workers = common.docker_workers(load_inventory(inventory), pool, worker)
    found = _each(workers, lambda w: gc_worker(w, dry_run=dry_run, images=policy), parallel)
    reports = [r for _, r in found]
    if not dry_run:
        removed = sum(1 for r in reports for i in r.items if not i.action.startswith(("failed", "would")))
        common.audit("gc", target=",".join(w.name for w in workers)[:500], detail={"workers": len(workers), "removed": removed, "images": bool(policy)})
    if json:
        ui.print_json({"dry_run": dry_run, "workers": [r.to_dict() for r in reports]})
    else:
        _gc_table(reports, dry_run)
    if any(r.error is not None or any(i.action.startswith("failed") for i in r.items) for r in reports):
        raise Exit(code=3)


def _gc_table(reports, dry_run: bool) -> None:
    from .tables import Col, cell_width, show

    escape = ui.safe
    cols = (Col("worker"), Col("what"), Col("which", flex=2), Col("note", flex=1, drop=1), Col("action", flex=1))
    rows = []
    failures = []
    for r in reports:
        if r.error is not None:
            rows.append([escape(r.worker), "–", "–", "", "[red]failed[/]"])
            failures.append(r.error.message if r.error.message.startswith(f"{r.worker}: ") else f"{r.worker}: {r.error.message}")  # named once
        elif not r.items:
            rows.append([escape(r.worker), "–", "", "", "[dim]nothing to remove[/]"])
        for i in r.items:
            colour = "red" if i.action.startswith("failed") else "yellow" if i.action.startswith("would") else "green"
            rows.append([escape(r.worker), escape(i.kind), escape(i.what), escape(i.note), f"[{colour}]{escape(i.action)}[/]"])
            if i.action.startswith("failed"):
                failures.append(f"{r.worker}: {i.kind} {i.what}: {i.action}")
    sizes = show("sshexec gc" + (" --dry-run" if dry_run else ""), cols, rows)
    # What a cell cut, in full: the paths and names to look at, whole.
    for row in rows:
        if cell_width(row[2]) > sizes.get("which", 0) or cell_width(row[3]) > sizes.get("note", 0):
            ui.line(f"  {row[0]}: {row[1]} {row[2]}" + (f" ({row[3]})" if row[3] else ""), hang=4)
    for f in failures:
        ui.line(f"[red]✗[/] {escape(f)}", hang=2)


TASKS = (locks, unlock, gc)
