"""`sshexec run`: running a runbook (`runs` and `logs`, the history of runs, are in data.py).

RunView turns the events of a run into progress bars and warnings on the
terminal; the run itself is the library's Runner.
"""

from __future__ import annotations

import os
import re
import sys
import threading

from invoke import Exit, task

from ..errors import InputError
from . import common, ui
from .common import DB_HELP, HELP_INVENTORY, load_inventory, more_usage, operand_unless, positional
from .complete import option_values
from .teams import NOTIFY_WAIT, approval_prompt, send_now

USAGE = "sshexec run RUNBOOK [--var NAME=VALUE]..., or sshexec run --retry-failed RUN_ID [--force]"


def retry_candidates() -> list[str]:
    """What `run --retry-failed <TAB>` offers: the newest runs of the local history that did not
    succeed. Only a SQLite history that is there and up to date is read (completion never waits on
    a network database, nor creates or upgrades one); anything else offers nothing."""
    from ..store.db import Database, resolve
    from ..store.schema import REVISION

    url = resolve()
    if not url.startswith("sqlite:"):
        return []
    try:
        db = Database(url)
        if not db.path.is_file() or db.revision() != REVISION:
            return []
        from ..store.history import History

        return [r.id for r in History(db).runs(50) if r.status not in ("succeeded", "running", "waiting", "queued")][:20]
    except Exception:  # noqa: BLE001 - a completion offers nothing rather than fail
        return []


@option_values(retry_failed=retry_candidates)
@operand_unless(runbook="retry-failed")
@more_usage("run --retry-failed RUN_ID [--force] [OPTIONS]")
@task(
    positional=["runbook"],
    iterable=["var"],
    help={
        "runbook": "the runbook YAML file (left out with --retry-failed)",
        "var": "set a variable the runbook declares under variables: (repeatable)",
        "worker": "run every step on this worker only",
        "inventory": HELP_INVENTORY,
        "json": "print a JSON summary on stdout (live output goes to stderr)",
        "parallel": "for target: each, how many workers at once (default: $SSHEXEC_PARALLEL, else 16)",
        "quiet": "do not stream the steps' output (it is still stored; see sshexec logs)",
        "retry-failed": "run the runbook of the run RUN_ID again, only where it did not succeed; the rest is carried over, "
        "and its --var values are used again (a --var given now wins)",
        "force": "with --retry-failed: retry even though the runbook file changed since RUN_ID",
        "latest": "with --retry-failed: take the images' tags again, not the digests RUN_ID ran",
        "dry-run": "print the plan (steps, conditions, workers per batch, images, retries) and contact nothing",
        "lock-wait": "how long to wait for a lock another run holds: seconds, or 90s, 5m, 1h (default 0: fail at once, exit 3)",
        "artifact-max": "the largest artifact stored, e.g. 200M (default: $SSHEXEC_ARTIFACT_MAX, else 1G); a bigger one is refused",
        "queue": "queue the run for the sshexec serve nodes sharing the database instead (as sshexec submit): prints its id",
        **DB_HELP,
    },
)
def run(
    c, runbook=None, var=None, worker=None, inventory=None, json=False, parallel=0, quiet=False, retry_failed=None, force=False, dry_run=False,
    lock_wait=None, artifact_max=None, db_password_file=None, db=None, queue=False, latest=False,
):  # fmt: skip
    """Run a runbook: each step in a container, output streamed live.

    Each step runs on its pool's workers: on every one at once (target: each),
    batch after batch (rolling:), or on one healthy worker (target: any),
    picked at random, or the first in the inventory with
    SSHEXEC_ANY_ORDER=inventory. A step runs if: success (nothing failed
    before), failure or always; retries: tries it again (see the README's
    "Release semantics").

    --retry-failed RUN_ID runs again only the steps and workers that failed,
    were skipped or cancelled in RUN_ID, with the outputs of the rest carried
    over. A retry runs the very images RUN_ID ran (their digests, pulled by
    digest where missing); --latest takes the tags again. --dry-run prints the
    plan without connecting to anything.

    A `lock:` of the runbook (or of a step) is taken on every worker it may
    touch before it starts; held by another run, it fails at once unless
    --lock-wait gives it time. Workers with `max_steps` run at most that many
    step containers at once; a step waits for a free slot.

    Each line is prefixed with WORKER/STEP and "|" (stdout) or "!" (stderr).
    Prints the run id at the end; `sshexec logs RUN_ID` shows it again. The
    run, its log and its artifacts are recorded in the history's database
    (--db): with PostgreSQL, every machine that shares it sees the run.
    Exit: 0 ok, 1 a script failed, 2 bad input, 3 infrastructure,
    124 timeout, 130 cancelled.
    """
    from ..config.runbook import load_runbook, parse_vars

    from ..store.artifacts import size_cap

    if queue:
        if retry_failed or dry_run or worker or inventory or latest:
            raise InputError("--queue takes a runbook and --var only: the node that claims the run uses its own inventory", hint="sshexec run --queue RUNBOOK [--var N=V]...")
        from .cluster import queue_run

        queue_run(positional(runbook, "the runbook", USAGE), var, json=json, db=db, db_password_file=db_password_file)
        return

    wait = common.seconds(lock_wait, "--lock-wait")
    cap = size_cap(artifact_max)
    carry = None
    history = None
    if retry_failed:
        from ..run.rerun import check_runbook, earlier_run, load_carry

        history = common.history(db, db_password_file)
        # The runbook is the one that run read.
        run_id = positional(retry_failed, "the run id", USAGE)
        if runbook:
            raise InputError(f"--retry-failed {run_id} reads the runbook that run read: leave out {runbook}", hint="usage: " + USAGE)
        if run_id.endswith((".yaml", ".yml")) or os.path.isfile(run_id):
            raise InputError(f"--retry-failed takes a run id, not a runbook file ({run_id})", hint="sshexec run --retry-failed RUN_ID: the retry reads the runbook that run read (see sshexec runs)")
        earlier = earlier_run(history, run_id)
        rb = load_runbook(earlier.runbook_path)
        check_runbook(earlier, rb.digest, force=force)
        carry = load_carry(history, earlier, rb)
    else:
        if force or latest:
            raise InputError(f"{'--force' if force else '--latest'} goes with --retry-failed RUN_ID", hint="usage: " + USAGE)
        rb = None
    inv = load_inventory(inventory)
    if rb is None:
        rb = load_runbook(positional(runbook, "the runbook file", USAGE), inv)  # every problem at once, pools and feeds too
    extra = parse_vars(var or [], rb)
    if history is None and not dry_run:
        history = common.history(db, db_password_file)  # unreachable: exit 3 before any worker is contacted
    run_runbook(
        rb, inv, extra=extra, worker=worker, json=json, at_once=parallel, quiet=quiet, carry=carry, dry_run=dry_run, lock_wait=wait,
        history=history, artifact_max=cap, latest=latest,
    )  # fmt: skip


def run_runbook(
    rb, inv, *, extra=None, worker=None, json=False, at_once: int | None = None, quiet=False, carry=None, dry_run=False, lock_wait: float = 0.0,
    history=None, artifact_max: int | None = None, latest: bool = False,
):  # fmt: skip
    """Run a loaded runbook with live output and a summary; Exit with the run's code.

    `at_once`: --parallel (see common.parallel); the any-order comes from the environment.
    `carry`: a --retry-failed (rerun.load_carry); `dry_run`: print the plan, contact nothing.
    `history`: where the run is recorded (default: the default history).
    """
    from ..run.runner import Runner
    from ..step.output import PrefixWriter

    parallel, any_order = common.parallel(at_once), common.any_order()  # bad values: exit 2 before anything starts
    if dry_run:
        from ..run.dryrun import render

        plan = Runner(rb, inv, extra_vars=extra, only_worker=worker, parallel=parallel, any_order=any_order, carry=carry, latest=latest).plan()
        if json:
            ui.print_json(plan)
        else:
            for line in render(plan):
                # A line too long for the terminal goes on under its own text: `3. deploy   if: ...`
                # under "deploy", `   image ...` under "image".
                numbered = re.match(r"\d+\. ", line)
                ui.line(ui.safe(line), hang=len(numbered.group()) if numbered else None)
        return
    view = RunView(json=json, history=history)
    terminal = None if quiet else PrefixWriter(view.out, terminal=True)
    runner = Runner(
        rb, inv, extra_vars=extra, only_worker=worker, parallel=parallel, any_order=any_order, terminal=terminal, on_event=view.event, carry=carry,
        lock_wait=lock_wait, history=history, artifact_max=artifact_max, latest=latest,
    )
    try:
        result = runner.run()
    finally:
        view.close()
    # Its end's notifications, tried once now, when it queued any (no endpoint wants it: no thread, no query).
    # An approval's "waiting" was sent when it came; one that failed then is a server's to retry.
    sender = send_now(runner.history, runner.run_id) if getattr(runner, "history", None) is not None and runner.announced else None
    if json:
        ui.print_json(result.view().model_dump(mode="json"))
    else:
        view.summary(result)
    if runner.interrupts >= 2:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(result.exit_code)  # a second Ctrl-C: do not wait for anything else
    if sender is not None:
        sender.join(NOTIFY_WAIT)  # what is not sent by then stays queued for a server (sshexec notify log)
    if result.exit_code:
        raise Exit(code=result.exit_code)


class RunView:
    """Turns run events into progress bars (in a terminal) and warnings, never into --json stdout."""

    def __init__(self, json: bool = False, history=None):
        # rich loads in a thread of its own while the run starts (ui.preload), off the
        # path to the first step. A Ctrl-C's warning that comes first waits for that
        # import; a second Ctrl-C never raises inside it (run.py's handler).
        ui.preload()
        self.json = json
        self.out = ui.TerminalOut(sys.stderr.buffer if json else sys.stdout.buffer)
        self.live = ui.LiveProgress(ui.progress_wanted(json), self.out)
        # A bar per fan-out (or per batch of a rolling step): its key -> (workers done, how many, label).
        self.bars: dict[tuple, tuple[set, int, str]] = {}
        self.bar_of: dict[tuple[str, str], tuple] = {}  # (step, worker) -> the key of its batch's bar
        self.waits: set = set()  # live lines of waits (for a lock, for a slot)
        self.cancelled_by: str | None = None  # who asked from outside (the server), when it said
        self.history = history  # where an approval decided at this terminal's prompt is written
        self._lock = threading.Lock()

    def event(self, kind: str, worker: str, data) -> None:
        if kind == "skip":
            ui.warn(f"skipping {worker}: {data.message}")
        elif kind == "step-skipped":
            if worker == "-":
                ui.info(f"step {data.step}: {data.message}")
            else:
                ui.warn(f"{worker}/{data.step}: {data.message}")
        elif kind == "carried":
            ui.info(f"{worker}/{data.step}: {data.message}")
        elif kind == "attempt":
            ui.warn(f"{worker}/{data.step}: attempt {data.attempt}/{data.attempts} {data.status}: {data.message}; attempt {data.attempt + 1}/{data.attempts} in {data.wait:.1f}s")
            self._undone(data.step, worker)
        elif kind == "batch":
            step, i, n, names = data
            ui.info(f"step {step}: batch {i}/{n}: {', '.join(names)}")
            self._bar(("batch", step, i), f"step {step} batch {i}/{n}: workers done", len(names), step=step, workers=names)
        elif kind == "pause":
            step, seconds = data
            ui.info(f"step {step}: pause of {seconds:g}s before the next batch")
        elif kind == "pull":
            total = len(data.layers) or None
            self.live.update(("pull", worker), f"{worker}: pull {data.status[:40]}", completed=len(data.done), total=total)
        elif kind == "upload":
            if data >= 1 << 20:
                self.live.update(("upload", worker), f"{worker}: upload {data >> 20} MiB", completed=None)
        elif kind in ("lock-wait", "slot-wait"):
            self._wait((kind, worker), data)
        elif kind == "lock-done":
            self._waited(lambda key: key[0] == "lock-wait")
        elif kind in ("running", "step-done"):
            self.live.done(("pull", worker))
            self.live.done(("upload", worker))
            self._waited(lambda key: key[0] == "slot-wait" and key[1] in (worker, ""))
            if kind == "step-done":
                self._done(data.step, worker)
        elif kind == "fanout":
            step, n = data
            self._bar(("fanout", step), f"step {step}: workers done", n)
        elif kind == "cancelled-by":
            self.cancelled_by = data
        elif kind == "cancel":
            self.live.close()
            by = f" (asked by {self.cancelled_by})" if self.cancelled_by else ""
            ui.warn(f"cancelling{by}: stopping the containers of this run… (Ctrl-C again to quit at once)" if data == 1 else "quitting")
        elif kind == "waiting":
            ui.info(f"step {data.step} waits for approval ({data.role}): {data.message}")
            ui.info(f"  sshexec approve {data.run_id} [--reject] [--comment TEXT], the server's run page, or POST /api/runs/{data.run_id}/approval")
            if self.history is not None:
                send_now(self.history, data.run_id)  # run.waiting: a server may be far, or none
                if not self.json and sys.stdin.isatty():
                    approval_prompt(self.history, data)
        elif kind == "approval":
            ui.info(f"step {data.step}: {data.message}")
        elif kind == "leftover":
            ui.warn(f"{worker}: could not clean up ({data}); run `sshexec check --worker {worker}` and remove containers labelled sshexec.run")

    def _wait(self, key, text: str) -> None:
        """The wait in full, once, on a line of its own (nothing cut: who holds the lock, since when);
        at a terminal, a live line too, short enough for its bar (`waiting for lock L on W`)."""
        with self._lock:
            first = key not in self.waits
            self.waits.add(key)
        if first:
            ui.info(text)
        if self.live.enabled:
            self.live.update(key, ui.safe(text.split(", ")[0]), completed=None)

    def _waited(self, which) -> None:
        with self._lock:
            done = [k for k in self.waits if which(k)]
            self.waits.difference_update(done)
        for key in done:
            self.live.done(key)

    def _bar(self, key: tuple, description: str, total: int, *, step: str = "", workers=()) -> None:
        with self._lock:
            self.bars[key] = (set(), total, description)
            for w in workers:
                self.bar_of[(step, w)] = key
        self.live.update(key, description, completed=0, total=total)

    def _done(self, step: str, worker: str, undo: bool = False) -> None:
        """A worker finished the step (or, `undo`, will try it again): its bar moves."""
        with self._lock:
            key = self.bar_of.get((step, worker), ("fanout", step))
            bar = self.bars.get(key)
            if bar is None:
                return
            done, total, description = bar
            (done.discard if undo else done.add)(worker)
            count = len(done)
        if count >= total:
            self.live.done(key)
        else:
            self.live.update(key, description, completed=count, total=total)

    def _undone(self, step: str, worker: str) -> None:
        self._done(step, worker, undo=True)

    def close(self) -> None:
        self.live.close()
        self.out.detach()

    def summary(self, result) -> None:
        from .tables import Col, cell_width, duration, show

        escape = ui.safe
        c = ui.console()
        colours = {"succeeded": "green", "failed": "red", "timed-out": "red", "error": "red", "cancelled": "yellow", "skipped": "dim"}
        cols = (Col("step"), Col("worker"), Col("status"), Col("exit", justify="right", drop=2), Col("time", justify="right", drop=1), Col("message", flex=1))
        rows = []
        for r in result.steps:
            tries = f" ({r.attempt}/{r.attempts})" if r.attempts > 1 else ""
            rows.append([
                escape(r.step), escape(r.worker), f"[{colours.get(r.status, 'white')}]{r.status}{tries}[/]",
                "–" if r.exit_code is None else str(r.exit_code), duration(r.duration), escape(common.short(r.message or "", 1000)),
            ])  # fmt: skip
        sizes = show(f"run {escape(result.run_id)}: {escape(result.runbook)}", cols, rows)
        # A message cut in the table, in full below it: broken only between words.
        for r, row in zip(result.steps, rows):
            if cell_width(row[-1]) > sizes["message"]:
                ui.line(f"{escape(r.step)} on {escape(r.worker)}: {escape(r.message or '')}", hang=2)
        outputs = result.outputs()
        if outputs:
            c.print("outputs:")
            for k, v in outputs.items():
                ui.line(f"  {escape(k)} = {escape(common.short(v))}", hang=4)
        arts = [(r, a) for r in result.steps for a in r.artifacts]
        if arts:
            c.print("artifacts:")
            for r, a in arts:
                fetch = escape(common.repeat_options(f"sshexec artifact {result.run_id} {r.worker}/{a.name}"))
                ui.copyable(f"  {escape(r.worker)}/{escape(a.name)} ({a.size} bytes) →", fetch, c)
        for r in result.steps:
            if r.error is not None and r.error.hint:
                ui.line(f"[yellow]→[/] {escape(common.repeat_options(r.error.hint))}", hang=2)
        colour = colours.get(result.status, "white")
        retried = f" · a retry of {result.retry_of}" if result.retry_of else ""
        logs = common.repeat_options(f"sshexec logs {result.run_id}")  # with the --db given, if any
        ui.copyable(f"[{colour}]{result.status}[/] in {result.duration:.1f}s · run id [bold]{result.run_id}[/]{retried} ·", escape(logs), c)
        if not result.ok and result.steps and all(r.step == "(runbook)" for r in result.steps):
            ui.line("[dim]no step ran: once the lock is free, run the runbook again (or wait for it: --lock-wait 5m)[/]")
        elif not result.ok and any(r.status != "succeeded" for r in result.steps):
            ui.copyable("[dim]to run again only what did not succeed:[/]", escape(common.repeat_options(f"sshexec run --retry-failed {result.run_id}")), c)


TASKS = (run,)
