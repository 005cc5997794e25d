"""The `sshexec` program and the `inv` tasks: parse, call the library, show the result.

    common.py    what several commands share (argument checks, help strings, the health table)
    workers.py   check, trust, prepull
    runs.py      run (and RunView: run events as progress)
    lab.py       lab, demo
    server.py    serve, token
    cluster.py   submit, nodes (drain, undrain), schedule (add, list, remove): the cluster's queue and nodes
    data.py      runs, logs, artifact, history (prune, retention), db (upgrade, status): the history
    coord.py     locks, unlock, gc (what runs hold on workers; what dead runs left)
    teams.py     audit (and, with issue 21, what teams need around runs)
    program.py   the invoke Program: sshexec's own options, help and errors
    helptext.py  --help within 80 columns, with operands and the values options take named
    ui.py        the consoles, lines broken between words, errors, progress
    tables.py    every table, fitted to the width (ids whole, the rest cut with …)
    health.py    check's compact view and --wide

No logic of its own lives here; every task is a thin layer over a library call.
"""

from __future__ import annotations

import logging

from invoke import Collection

from .. import __version__
from . import agent, cluster, coord, data, lab, runs, server, teams, ui, workers
from .program import SshexecProgram

__all__ = ["main", "ns", "program"]


def build_collection() -> Collection:
    ns = Collection()
    for t in workers.TASKS + runs.TASKS + data.TASKS + coord.TASKS + lab.TASKS + server.TASKS + cluster.TASKS + agent.TASKS + teams.TASKS:
        ns.add_task(t)
    return ns


ns = build_collection()
program = SshexecProgram(name="sshexec", binary="sshexec", binary_names=["sshexec"], version=__version__, namespace=ns)


class _WarningHandler(logging.Handler):
    """Library warnings reach the person as `warning: ...` lines on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            ui.warn(record.getMessage())
        except Exception:  # noqa: BLE001 - never let a log line break a run
            pass


def setup_logging() -> None:
    log = logging.getLogger("sshexec")
    if not log.handlers:
        log.addHandler(_WarningHandler(logging.WARNING))
        log.propagate = False
    # paramiko logs transport errors we already translate into our own messages.
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)


def main() -> None:
    setup_logging()
    program.run()
