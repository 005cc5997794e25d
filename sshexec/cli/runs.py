"""`sshexec run`, `runs` and `logs`: running a runbook, and the history of runs.

RunView turns the events of a run into progress bars and warnings on the
terminal; the run itself is the library's Runner.
"""

from __future__ import annotations

import os
import sys
import threading
import time

from invoke import Exit, task

from .. import ui
from ..errors import InputError
from . import common
from .common import HELP_INVENTORY, load_inventory, positional


@task(
    positional=["runbook"],
    iterable=["var"],
    help={
        "runbook": "the runbook YAML file",
        "var": "NAME=VALUE: set or override a plain variable (repeatable)",
        "worker": "run every step on this worker only",
        "inventory": HELP_INVENTORY,
        "json": "print a JSON summary on stdout (live output goes to stderr)",
        "parallel": "for target: each, how many workers at once (default: $SSHEXEC_PARALLEL, else 16)",
        "quiet": "do not stream the steps' output (it is still stored; see sshexec logs)",
    },
)
def run(c, runbook=None, var=None, worker=None, inventory=None, json=False, parallel=0, quiet=False):
    """Run a runbook: each step in a container, output streamed live.

    Each step runs on its pool's workers: on every one at once (target: each),
    or on one healthy worker (target: any), picked at random, or the first in
    the inventory with SSHEXEC_ANY_ORDER=inventory.

    Each line is prefixed with WORKER/STEP and "|" (stdout) or "!" (stderr).
    Prints the run id at the end; `sshexec logs RUN_ID` shows it again.
    Exit: 0 ok, 1 a script failed, 2 bad input, 3 infrastructure, 124 timeout, 130 cancelled.
    """
    from ..runbook import load_runbook, parse_vars

    rb = load_runbook(positional(runbook, "the runbook file", "sshexec run RUNBOOK [--var NAME=VALUE]..."))
    inv = load_inventory(inventory)
    extra = parse_vars(var or [], rb)
    run_runbook(rb, inv, extra=extra, worker=worker, json=json, at_once=parallel, quiet=quiet)


def run_runbook(rb, inv, *, extra=None, worker=None, json=False, at_once: int | None = None, quiet=False):
    """Run a loaded runbook with live output and a summary; Exit with the run's code.

    `at_once`: --parallel (see common.parallel); the any-order comes from the environment.
    """
    from ..run import Runner
    from ..stream import PrefixWriter

    parallel, any_order = common.parallel(at_once), common.any_order()  # bad values: exit 2 before anything starts
    view = RunView(json=json)
    terminal = None if quiet else PrefixWriter(view.out, terminal=True)
    runner = Runner(
        rb, inv, extra_vars=extra, only_worker=worker, parallel=parallel, any_order=any_order, terminal=terminal, on_event=view.event
    )
    try:
        result = runner.run()
    finally:
        view.close()
    if json:
        ui.print_json(result.to_dict())
    else:
        view.summary(result)
    if result.exit_code == 130 and runner.interrupts >= 2:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)  # a second Ctrl-C: do not wait for anything else
    if result.exit_code:
        raise Exit(code=result.exit_code)


class RunView:
    """Turns run events into progress bars (in a terminal) and warnings, never into --json stdout."""

    def __init__(self, json: bool = False):
        self.json = json
        self.out = ui.TerminalOut(sys.stderr.buffer if json else sys.stdout.buffer)
        self.live = ui.LiveProgress(ui.progress_wanted(json), self.out)
        self.fanout: dict[str, list[int]] = {}
        self._lock = threading.Lock()
        # Imported now, not in the Ctrl-C handler's warning: a second Ctrl-C landing in the
        # middle of importing rich left it half-initialized, and the run ended with exit 3.
        ui.err_console()

    def event(self, kind: str, worker: str, data) -> None:
        if kind == "skip":
            ui.warn(f"skipping {worker}: {data.message}")
        elif kind == "pull":
            total = len(data.layers) or None
            self.live.update(("pull", worker), f"{worker}: pull {data.status[:40]}", completed=len(data.done), total=total)
        elif kind == "upload":
            if data >= 1 << 20:
                self.live.update(("upload", worker), f"{worker}: upload {data >> 20} MiB", completed=None)
        elif kind in ("running", "step-done"):
            self.live.done(("pull", worker))
            self.live.done(("upload", worker))
            if kind == "step-done":
                self._fanout_done(data.step)
        elif kind == "fanout":
            step, n = data
            with self._lock:
                self.fanout[step] = [0, n]
            self.live.update(("fanout", step), f"step {step}: workers done", completed=0, total=n)
        elif kind == "cancel":
            self.live.close()
            ui.warn("cancelling: stopping the containers of this run… (Ctrl-C again to quit at once)" if data == 1 else "quitting")
        elif kind == "leftover":
            ui.warn(f"{worker}: could not clean up ({data}); run `sshexec check --worker {worker}` and remove containers labelled sshexec.run")

    def _fanout_done(self, step: str) -> None:
        with self._lock:
            counts = self.fanout.get(step)
            if counts is None:
                return
            counts[0] += 1
            done, n = counts
        if done >= n:
            self.live.done(("fanout", step))
        else:
            self.live.update(("fanout", step), f"step {step}: workers done", completed=done, total=n)

    def close(self) -> None:
        self.live.close()
        self.out.detach()

    def summary(self, result) -> None:
        from rich.table import Table

        escape = ui.safe
        c = ui.console()
        table = Table(title=f"run {result.run_id}: {result.runbook}", title_justify="left")
        for col in ("step", "worker", "status", "exit", "time", "message"):
            table.add_column(col)
        colours = {"succeeded": "green", "failed": "red", "timed-out": "red", "error": "red", "cancelled": "yellow"}
        for r in result.steps:
            table.add_row(
                escape(r.step), escape(r.worker), f"[{colours.get(r.status, 'white')}]{r.status}[/]",
                "–" if r.exit_code is None else str(r.exit_code), f"{r.duration:.1f}s", escape(r.message or ""),
            )  # fmt: skip
        c.print(table)
        outputs = result.outputs()
        if outputs:
            c.print("outputs:")
            for k, v in outputs.items():
                c.print(f"  {escape(k)} = {escape(_short(v))}")
        arts = [(r, a) for r in result.steps for a in r.artifacts]
        if arts:
            c.print("artifacts:")
            for r, a in arts:
                c.print(f"  {escape(r.worker)}/{escape(a.name)} ({a.size} bytes) → {escape(str(a.path))}")
        for r in result.steps:
            if r.error is not None and r.error.hint:
                c.print(f"[yellow]→[/] {escape(r.error.hint)}")
        colour = colours.get(result.status, "white")
        c.print(f"[{colour}]{result.status}[/] in {result.duration:.1f}s · run id [bold]{result.run_id}[/] · sshexec logs {result.run_id}")


def _short(v: str, n: int = 200) -> str:
    v = v.replace("\n", "\\n")
    return v if len(v) <= n else v[:n] + "…"


@task(
    help={
        "limit": "how many runs (default 20)",
        "status": "only runs with this status (running, succeeded, failed, cancelled, ...)",
        "runbook": "only runs of this runbook (its name:)",
        "json": "print JSON",
    }
)
def runs(c, limit=20, status=None, runbook=None, json=False):
    """The run history, newest first."""
    from rich.table import Table

    from ..history import History
    from ..models import RunSummary

    escape = ui.safe
    records = History().runs(int(limit), status=status, runbook=runbook)
    if json:
        ui.print_json([RunSummary.of(r).model_dump() for r in records])
        return
    table = Table(title="sshexec runs", title_justify="left")
    for col in ("run id", "runbook", "started", "time", "status", "exit", "message"):
        table.add_column(col)
    for r in records:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.started))
        took = f"{r.finished - r.started:.1f}s" if r.finished else "–"
        table.add_row(r.id, escape(r.runbook), started, took, r.status, "–" if r.exit_code is None else str(r.exit_code), escape(_short(r.message or "", 80)))
    ui.console().print(table)


@task(
    positional=["run_id"],
    help={
        "run_id": "a run id (or a unique prefix)",
        "json": "print JSON (log included)",
        "follow": "print the log as it grows, until the run ends; exit with the run's exit code",
    },
)
def logs(c, run_id=None, json=False, follow=False):
    """One run's stored (masked) log, steps, outputs and artifacts.

    With --follow, a run that is still going (started here or by another
    sshexec process, `sshexec serve` included) is tailed live; the command ends
    when the run ends, with the run's exit code. Ctrl-C stops following, not the run.
    """
    from ..history import History
    from ..logtail import LogTail
    from ..stream import neutralise

    escape = ui.safe
    run_id = positional(run_id, "the run id", "sshexec logs RUN_ID (see sshexec runs)")
    if json and follow:
        raise InputError("--json and --follow do not go together", hint="follow the run, then ask for its JSON: sshexec logs RUN_ID --json")
    h = History()
    ids = h.find(run_id)
    if not ids:
        raise InputError(f"no run {run_id!r} in the history", hint="see sshexec runs")
    if len(ids) > 1 and run_id not in ids:
        raise InputError(f"{run_id!r} matches {len(ids)} runs", hint="give more of the run id")
    rid = run_id if run_id in ids else ids[0]
    rec = h.run(rid)
    log_path = h.log_path(rid)
    if json:
        from ..models import RunDetail, RunWithLog

        text = log_path.read_bytes().decode("utf-8", "replace") if log_path.exists() else ""
        ui.print_json(RunWithLog(**RunDetail.load(h, rec).model_dump(), log=text).model_dump())
        return
    c_ = ui.console()
    c_.print(f"run [bold]{rec.id}[/] · {escape(rec.runbook)} · {rec.status}" + ("" if follow and rec.status == "running" else f" (exit {rec.exit_code})"))
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
        c_.print(f"{escape(s['step'])} on {escape(s['worker'])}: {s['status']} (exit {s['exit_code']}) {escape(s['message'] or '')}")
        for k, v in s["outputs"].items():
            c_.print(f"  {escape(s['step'])}.{escape(k)} = {escape(_short(v))}")
    for a in h.artifacts(rid):
        c_.print(f"artifact {escape(a['worker'])}/{escape(a['name'])} ({a['size']} bytes) → {escape(a['path'])}")
    if follow:
        c_.print(f"{rec.status} (exit {rec.exit_code}) · run id [bold]{rec.id}[/]")
        code = rec.exit_code if rec.exit_code is not None else 3  # interrupted: its process died
        if code:
            raise Exit(code=code)


TASKS = (run, runs, logs)
