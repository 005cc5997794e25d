"""`sshexec check`, `trust` and `prepull`: commands about the workers themselves."""

from __future__ import annotations

import sys
import threading

from invoke import Exit, task

from ..errors import InputError
from . import common, ui
from .common import HELP_INVENTORY, HELP_JSON, HELP_PARALLEL, HELP_POOL, HELP_WORKER, check_workers, load_inventory, positional, show_health


@task(
    help={
        "pool": HELP_POOL,
        "worker": HELP_WORKER,
        "inventory": HELP_INVENTORY,
        "json": HELP_JSON,
        "wide": "every check in its own column, and which daemon answered",
        "parallel": HELP_PARALLEL,
    }
)
def check(c, pool=None, worker=None, inventory=None, json=False, wide=False, parallel=0):
    """Check that each worker is reachable and can run containers.

    For every selected worker: SSH reachable, host key known, docker CLI
    present, daemon reachable, permission to use it, server version, platform
    and free disk in work_root. Exit 0 only if all are healthy, 3 otherwise.

    The table shows each worker's status, Docker version, free disk and its
    problem in a word, then each problem in full with what to do. --wide
    shows every check, the daemon that answered (endpoint, name, ID), the
    daemon's own disk and the step slots in use; --json all of it.
    """
    workers = load_inventory(inventory).select(pool=pool, worker=worker)
    show_health(check_workers(workers, at_once=parallel), json=json, wide=wide)


@task(
    help={
        "worker": "the worker whose host key to trust (required)",
        "yes": "do not ask: add the keys",
        "replace": "replace a different key already in known_hosts (after a reinstall)",
        "inventory": HELP_INVENTORY,
        "json": HELP_JSON,
    }
)
def trust(c, worker=None, yes=False, replace=False, inventory=None, json=False):
    """Show every hop's host key to a worker; add those you confirm.

    Keys already in known_hosts pass silently; each unknown key is shown with
    its fingerprint and added once confirmed (--yes: without asking). A changed
    key is refused unless --replace is given. A host whose certificate a CA of
    known_hosts (@cert-authority) vouches for is covered by that CA: nothing is
    written for it. A revoked key (@revoked) is refused, exit 3. Compare each
    fingerprint with the one the machine's console shows (ssh-keygen -lf
    /etc/ssh/ssh_host_ed25519_key.pub) before saying yes.
    """
    from ..ssh.trust import trust_worker

    if not worker:
        raise InputError("trust needs --worker NAME")
    w = load_inventory(inventory).worker(worker)
    if not yes and not sys.stdin.isatty():
        raise InputError("not confirmed: run with --yes to add the keys without asking")

    def confirm(hk) -> bool:
        if not json:
            verb = "now offers" if hk.status == "changed" else "offers"
            ui.info(f"{hk.what} {verb} {hk.key.get_name()} {hk.fingerprint}" + (f" (known_hosts has {', '.join(hk.known)})" if hk.known else ""))
        if yes:
            return True
        answer = input(f"{'Replace' if hk.status == 'changed' else 'Add'} this key in {w.known_hosts}? [y/N] ").strip().lower()
        return answer in ("y", "yes")

    keys = trust_worker(w, confirm, replace=replace)
    if json:
        ui.print_json({"worker": w.name, "known_hosts": str(w.known_hosts), "hops": [k.to_dict() for k in keys],
                       "fingerprint": keys[-1].fingerprint, "added": any(k.added for k in keys)})  # fmt: skip
        return
    for k in keys:
        if k.added:
            ui.info(f"{k.what}: added to {w.known_hosts}" + (" (replacing the old key)" if k.status == "changed" else ""))
        elif k.status == "certified":
            ui.info(f"{k.what}: covered by the CA {k.ca}, which signed its host certificate; no key written")
        else:
            ui.info(f"{k.what}: {k.key.get_name()} {k.fingerprint} already in {w.known_hosts}")


@task(
    positional=["image"],
    help={
        "image": "the image reference to pull, e.g. 127.0.0.1:5000/sshexec/tools:1",
        "feed": "log in with this feed's credentials first",
        "pool": "only workers of this pool (default: every worker in a pool; jump hosts have no Docker)",
        "worker": HELP_WORKER,
        "inventory": HELP_INVENTORY,
        "json": HELP_JSON,
        "parallel": HELP_PARALLEL,
    },
)
def prepull(c, image=None, feed=None, pool=None, worker=None, inventory=None, json=False, parallel=0):
    """Pull an image on every worker, or a pool, at once, with progress.

    First runs are then fast: the image is already there.
    Exit 0 if every worker has the image, 3 if any failed (the table says
    which and why).
    """
    from ..config.runbook import check_image_reference
    from ..ops.prepull import prepull as pull_everywhere

    image = positional(image, "the image", "sshexec prepull IMAGE [--feed F] [--pool P]")
    try:
        check_image_reference(image)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    at_once = common.parallel(parallel)
    inv = load_inventory(inventory)
    workers = common.docker_workers(inv, pool, worker)
    f = inv.feed(feed) if feed else None
    live = ui.LiveProgress(ui.progress_wanted(json), ui.TerminalOut())
    cancel = threading.Event()

    def progress(name, p):
        live.update(name, f"{name}: {ui.safe(p.status[:50]) or 'pulling'}", completed=len(p.done), total=len(p.layers) or None)

    try:
        results = pull_everywhere(workers, image, feed=f, parallel=at_once, on_progress=progress, cancel=cancel)
    except KeyboardInterrupt:
        cancel.set()
        raise
    finally:
        live.close()
    if json:
        ui.print_json({"image": image, "ok": all(r.ok for r in results), "workers": [r.to_dict() for r in results]})
    else:
        _prepull_table(image, results, feed)
    if not all(r.ok for r in results):
        raise Exit(code=3)


def _prepull_table(image: str, results, feed: str | None = None) -> None:
    from .tables import Col, duration, show

    escape = ui.safe
    cols = (Col("worker"), Col("result"), Col("time", justify="right"), Col("image id / error", flex=1))
    rows = []
    said = {r.worker: _named(r.worker, r.error.message if r.error else "failed") for r in results if not r.ok}
    for r in results:
        # the row names the worker: its error without the "w1: " it starts with
        detail = (r.image_id or "")[:19] if r.ok else escape(said[r.worker].removeprefix(f"{r.worker}: "))
        rows.append([escape(r.worker), "[green]pulled[/]" if r.ok else "[red]failed[/]", duration(r.duration), detail])
    show(f"prepull {escape(image)}", cols, rows)
    for message in said.values():
        ui.line(f"[red]✗[/] {escape(message)}", hang=2)
    # One line per piece of advice, naming the workers it is for (it used to repeat per worker).
    advice: dict[str, list[str]] = {}
    for r in results:
        if r.error is not None and r.error.hint:
            advice.setdefault(_prepull_hint(r.error, image, feed), []).append(r.worker)
    for hint, names in advice.items():
        ui.line(f"[yellow]→[/] {escape(', '.join(names))}: {escape(hint)}", hang=2)


def _named(worker: str, message: str) -> str:
    """`message` naming `worker` once: errors of a worker already start with its name."""
    return message if message.startswith(f"{worker}: ") else f"{worker}: {message}"


def _prepull_hint(error, image: str, feed: str | None) -> str:
    """A pull's advice, for prepull: a run names its feed in the runbook, prepull with --feed."""
    if feed is None and "authentication required" in error.message:
        return f"give a feed with credentials for that registry: sshexec prepull {image} --feed NAME"
    return error.hint


TASKS = (check, trust, prepull)
