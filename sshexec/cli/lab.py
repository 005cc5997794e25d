"""`sshexec lab ...` and `sshexec demo`: the local lab, and the example runbook run on it."""

from __future__ import annotations

import os
import shlex

from invoke import task

from ..errors import InputError
from . import ui
from .complete import option_values
from .common import check_workers, load_inventory, show_health
from .runs import run_runbook


ACTIONS = ("up", "down", "status", "env")


def _lab():
    from ..lab.core import Lab

    return Lab()


def lab_up(workers: int | None = None, quiet: bool = False, shared_daemon: bool = False):
    lab = _lab()
    if quiet or not ui.interactive():
        say = (lambda msg: None) if quiet else ui.info
        return lab.up(workers, shared_daemon=shared_daemon, progress=say)
    with ui.err_console().status("lab up") as status:
        return lab.up(workers, shared_daemon=shared_daemon, progress=lambda msg: status.update(f"lab up: {msg}"))


def _show_status(st, json):
    if json:
        ui.print_json(st.to_dict())
        return
    from .tables import Col, show

    c = ui.console()
    ui.line(f"host daemon: {st.daemon}" + (" (every worker uses it: --shared-daemon)" if st.shared_daemon else ""), hang=13)
    ui.line(f"registry:    {st.registry} at {st.registry_address}", hang=13)
    c.print(f"inventory:   {st.inventory or '(none)'}", soft_wrap=True)  # a path to copy: never broken
    daemons = {d.worker: d for d in st.daemons}
    # The container and the address (with its port) whole; the daemon cut to the room left.
    # The role shows in the address (via bastion) and the daemon (a jump host has none).
    cols = (Col("worker"), Col("container"), Col("address"), Col("state", drop=2), Col("docker daemon", flex=1, drop=1))
    rows = []
    for w in st.workers:
        address = f"127.0.0.1:{w.port}" if w.port else (f"{w.name}:22 via bastion" if w.role == "internal" else "–")
        d = daemons.get(w.name)
        if w.role == "bastion":
            where = "none (a jump host)"
        elif d is not None:
            where = f"pid {d.pid} · {d.subnet} · {d.bridge}" if d.running else "[red]stopped[/]"
        else:
            where = "the host's"
        rows.append([w.name, w.container, address, "running" if w.running else "stopped", where])
    show("lab workers", cols, rows)
    roots = {w.name: w.work_root for w in st.workers if w.work_root}
    if roots:
        # Each work_root is mounted at the same path on the host: one line when they follow one pattern.
        pattern = {root[: -len(name)] for name, root in roots.items() if root.endswith("/" + name)}
        if len(pattern) == 1 and all(root.endswith("/" + name) for name, root in roots.items()):
            c.print(f"work_root:   {pattern.pop()}WORKER", soft_wrap=True)
        else:
            for name, root in roots.items():
                c.print(f"work_root of {name}: {root}", soft_wrap=True)


@option_values(action=ACTIONS)
@task(
    positional=["action"],
    help={
        "action": "up | down | status | env",
        "workers": "lab up: how many SSH workers reached directly (default: as many as now, else 2)",
        "shared-daemon": "lab up: every worker uses the host's Docker daemon (for large labs)",
        "json": "print machine-readable JSON",
    },
)
def lab(c, action=None, workers=None, shared_daemon=False, json=False):
    """A local lab: SSH workers with a dockerd each, and a bastion.

    `lab up` starts a registry with auth on 127.0.0.1, SSH workers w1..wN
    published on 127.0.0.1, each with a Docker daemon of its own (its own
    image cache and disk), a bastion, and inner1 on an internal network,
    reachable only through the bastion. It writes inventory/lab.yaml for
    them (the feed, a key, known_hosts with every host key).

    up      start what is missing (idempotent; images are built offline
            and cached)
    down    remove exactly what `up` created: containers, daemons, bridges, data;
            stop only processes it started
    status  say what is up
    env     print shell exports for the lab (eval "$(sshexec lab env)")
    """
    if action == "up":
        st = lab_up(int(workers) if workers else None, shared_daemon=shared_daemon)
        _show_status(st, json)
    elif action == "down":
        done = _lab().down(progress=None if json else ui.info)
        if json:
            ui.print_json({"done": done})
        else:
            for line in done or ["nothing to do"]:
                ui.info(line)
    elif action == "status":
        _show_status(_lab().status(), json)
    elif action == "env":
        lab_ = _lab()
        if not lab_.inventory_path.exists():
            raise InputError(f"the lab {lab_.name} is not up: there is no {lab_.inventory_path}", hint="bring it up first: sshexec lab up")
        for key, value in lab_.env().items():
            print(f"export {key}={shlex.quote(value)}")
    else:
        raise InputError(f"unknown lab action {action!r}", hint="use one of: up, down, status, env")


@task(help={"workers": "how many lab workers (default 2)", "json": "print the run summary as JSON"})
def demo(c, workers=None, json=False):
    """Bring the lab up, check it, and run the example runbook on it.

    The runbook is runbooks/demo.yaml (shipped with sshexec): a bash build
    step that packs the files of its bundle into an artifact and sets output
    variables, a busybox step on every worker that reads them, and a python
    report step on the worker behind the lab's bastion; a sensitive token is
    masked throughout.
    """
    import dataclasses
    from pathlib import Path

    from ..config.runbook import load_runbook

    lab_up(int(workers) if workers else None, quiet=json)
    lab = _lab()
    os.environ.update(lab.env())
    os.environ.setdefault("SSHEXEC_DEMO_TOKEN", "demo-t0ken-" + os.urandom(4).hex())
    inv = load_inventory(str(lab.inventory_path))
    if not json:
        show_health(check_workers(inv.select()), json=False)
    # Package data (runbooks/ in a checkout is a link to it): the demo works from any directory.
    runbook = Path(__file__).resolve().parents[1] / "lab" / "runbooks" / "demo.yaml"
    if not runbook.exists():
        raise InputError(f"the demo runbook {runbook} is missing: this installation of sshexec is incomplete", hint="reinstall it: pip install --force-reinstall sshexec")
    rb = load_runbook(runbook)
    # The runbook names the default lab registry; point it at this lab's.
    steps = tuple(dataclasses.replace(s, image=s.image.replace("127.0.0.1:5000/", lab.registry_address + "/", 1)) for s in rb.steps)
    rb = dataclasses.replace(rb, steps=steps)
    if not json:
        ui.info(f"running {runbook} on the lab…")
    run_runbook(rb, inv, json=json)


TASKS = (lab, demo)
