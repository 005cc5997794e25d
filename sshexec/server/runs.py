"""The runs a server starts, the runbooks it may start, and cancelling any run of the history.

A run asked of the server (POST /api/runs, the page's Run button) is checked,
then queued (store/queue.py); this server's node (node.py), or another node
sharing the database, claims it and calls start_claimed().

The server runs the library's Runner, in a thread per run, exactly as `sshexec
run` does in its process: the same history (its database, the log and
artifacts included), the same locks and rolling. Nothing about a run lives only here:
`active` is just the handle needed to cancel it.

Runbooks come only from the --runbooks directory: a request names a file of
it (without .yaml) and can never give a path. Plain variables may come from a
request; sensitive ones only from the server's environment.

Cancelling:
- a run of this server: its cancel event, as Ctrl-C does (containers stopped,
  files removed, recorded cancelled, exit 130);
- a queued run: it ends cancelled at once, without running;
- a run of another node: who asked is written in its row, which that node
  reads within its poll (node.py) and cancels the run itself;
- a run started by another sshexec process on this host (the command line):
  SIGTERM to that process, which cancels it the same way; an admin's right,
  since it signals a process the server did not start;
- a run started on another host, or one that already ended: RunConflict (409).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..core.local import signal_process, state_home
from ..errors import InputError, SshexecError
from ..store import queue
from ..store.history import History
from ..views import RunbookView

log = logging.getLogger("sshexec")

RUNBOOK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
# An absolute path in a message (not an API path): the server shows only its last part.
ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])/(?!api/)[^\s'\"`:,;()\[\]]+")
START_WAIT = 60.0  # until the run is in the history; only a wedged disk takes this long


class RunConflict(Exception):
    """The run cannot be cancelled from here (409)."""


class NotAllowed(Exception):
    """The caller's role does not allow this (403)."""


@dataclass
class Settings:
    """What `sshexec serve` was started with."""

    runbooks: Path
    inventory: str | None = None
    parallel: int = 16
    any_order: str = "random"
    environ: dict = field(default_factory=lambda: os.environ)
    max_body: int = 1 << 20  # bytes a request may send (serve --max-body); past it, 413
    stream_recheck: float = 30.0  # seconds between checks that an open log stream's token or session is still valid
    node: str | None = None  # this server's name among the nodes (default: the host name)
    task_cap: int = 5  # runs running at once on this node
    node_stale: float = 30.0  # seconds without a check-in after which a node is lost
    drain_timeout: float = 600.0  # SIGTERM: seconds to wait for the node's runs before cancelling them
    health_every: float = 600.0  # seconds between the workers' checks by the maintenance node, for every node (0: none)
    cluster: bool = True  # False: no node (a library caller's app that only reads)


class ServerRuns:
    def __init__(self, settings: Settings, history: History):
        self.settings = settings
        self.history = history
        self.node = None  # server/node.py's Node, once serve() starts it
        self.active: dict[str, tuple[object, threading.Thread]] = {}
        self._lock = threading.Lock()

    # -- runbooks ------------------------------------------------------------------------

    def runbook_files(self) -> dict[str, Path]:
        """name -> file, for every *.yaml / *.yml directly in the runbooks directory."""
        found: dict[str, Path] = {}
        base = self.settings.runbooks
        if base.is_dir():
            for p in sorted(base.iterdir()):
                if p.suffix in (".yaml", ".yml") and p.is_file() and RUNBOOK_NAME.fullmatch(p.stem):
                    found.setdefault(p.stem, p)
        return found

    def load(self, name: str):
        from ..config.runbook import load_runbook

        path = self.runbook_files().get(name)
        if path is None:
            raise LookupError(f"no runbook named {name!r} in the server's runbooks directory: see GET /api/runbooks")
        return load_runbook(path)

    def public(self, text: str | None) -> str | None:
        """`text` as an HTTP client may see it: no file path of this machine.

        A path in the runbooks directory becomes relative to it (`demo.yaml:12`), the
        inventory and $SSHEXEC_HOME are named, any other absolute path keeps its last part.
        """
        if not text:
            return text
        base = str(self.settings.runbooks)
        roots = [(base + "/", ""), (base, "the runbooks directory"), (str(self.history.db.home or state_home()), "$SSHEXEC_HOME")]
        if self.settings.inventory:
            roots.insert(0, (str(Path(self.settings.inventory).resolve()), "the server's inventory"))
            roots.insert(0, (str(self.settings.inventory), "the server's inventory"))
        for root, shown in roots:
            text = text.replace(root, shown)
        return ABSOLUTE_PATH.sub(lambda m: ".../" + m[0].rstrip("/").rsplit("/", 1)[-1], text)

    def catalogue(self) -> list[RunbookView]:
        out = []
        for name in self.runbook_files():
            try:
                rb = self.load(name)
            except InputError as exc:
                out.append(RunbookView(name=name, title=name, variables={}, sensitive=[], steps=[], error=self.public(exc.message)))
                continue
            env = self.settings.environ
            out.append(RunbookView(
                name=name, title=rb.name, variables=dict(rb.variables), sensitive=sorted(rb.sensitive),
                missing=sorted(v for v in rb.sensitive.values() if v not in env), steps=[s.name for s in rb.steps],
            ))  # fmt: skip
        return out

    # -- queueing and starting -----------------------------------------------------------

    def enqueue(self, name: str, variables: dict[str, str], *, by: str, source: str | None = None) -> str:
        """Queue runbook `name` for the nodes (store/queue.py); its run id. Checked first, as a start would be:

        LookupError for an unknown runbook; InputError (bad variable, missing sensitive value, bad
        inventory) before anything is queued."""
        from ..store.audit import AuditLog

        self.check(name, variables, by=by)
        run_id = queue.submit(self.history.db, name, variables, by=f"token:{by}")
        # The trigger is recorded now, where who asked and from where are known (the node that runs it does not).
        detail = {"runbook": name, "vars": sorted(variables), "queued": True}
        # try_record: the run is queued already; a database that fails just now costs a warning, not the answer.
        AuditLog(self.history.db).try_record("run.trigger", who=f"token:{by}", source=source or "http", target=run_id, detail=detail)
        if self.node is not None:
            self.node.wake.set()
        log.info("run %s of %s queued by %s", run_id, name, by)
        return run_id

    def check(self, name: str, variables: dict[str, str], *, by: str) -> None:
        """What a start of runbook `name` would check before contacting anything (LookupError, InputError)."""
        self._runner(name, variables, by=by).prepare()

    def _runner(self, name: str, variables: dict[str, str], *, by: str, **kw):
        from ..config.inventory import load_inventory
        from ..config.variables import outside_values
        from ..run.runner import Runner

        rb = self.load(name)
        for var in variables:
            if var in rb.sensitive:
                raise InputError(
                    f"{var} is a sensitive variable: the server takes it from its own environment (${rb.sensitive[var]}), never from a request",
                    field=f"vars.{var}",
                )
        extra = outside_values(variables, rb, "vars.{}")  # only names of its variables:, never a loader name
        inv = load_inventory(self.settings.inventory)
        return Runner(
            rb, inv, extra_vars=extra, parallel=self.settings.parallel, any_order=self.settings.any_order,
            history=self.history, environ=self.settings.environ, started_by=by, **kw,
        )  # fmt: skip

    def start_claimed(self, claim) -> None:
        """Run a queued run this node claimed, in a thread; a run that cannot start is recorded as an error."""
        try:
            kw = {"run_id": claim.run_id, "claim": claim.key}
            if claim.retry_of:
                from ..run.rerun import load_carry

                rb = self.load(claim.runbook)
                kw["carry"] = load_carry(self.history, self.history.run(claim.retry_of), rb)
            runner = self._runner(claim.runbook, claim.variables, by=claim.submitted_by or "?", **kw)
            runner.prepare()
        except (LookupError, SshexecError) as exc:
            text = exc.message if isinstance(exc, SshexecError) else str(exc.args[0] if exc.args else exc)
            log.warning("run %s of %s could not start on node %s: %s", claim.run_id, claim.runbook, claim.node, text)
            queue.fail_claimed(self.history.db, claim, f"could not start on node {claim.node}: {text}", **_status_of(exc))
            return
        thread = threading.Thread(target=self._run, args=(runner,), name=f"run-{runner.run_id}", daemon=True)
        with self._lock:
            self.active[runner.run_id] = (runner, thread)
        thread.start()
        log.info("run %s of %s started on node %s (queued by %s)", runner.run_id, claim.runbook, claim.node, claim.submitted_by)

    def requeue_on_loss(self, runbook: str) -> bool:
        """Whether runbook `runbook` (a name of the runbooks directory) says `on_node_loss: requeue`."""
        try:
            return self.load(runbook).on_node_loss == "requeue"
        except (LookupError, SshexecError):
            return False

    def active_ids(self) -> list[str]:
        with self._lock:
            return list(self.active)

    def _run(self, runner) -> None:
        try:
            result = runner.run()
            log.info("run %s ended: %s (exit %s)", runner.run_id, result.status, result.exit_code)
        except Exception:  # noqa: BLE001 - a thread has nobody else to tell
            log.exception("run %s crashed", runner.run_id)
        finally:
            with self._lock:
                self.active.pop(runner.run_id, None)

    # -- cancelling ----------------------------------------------------------------------

    def cancel(self, run_id: str, *, admin: bool, who: str = "the server") -> str:
        """Cancel a running run; says how. LookupError, RunConflict or NotAllowed if it cannot be.

        `who` is told to a command-line run before its process is signalled, so that it can say who stopped it.
        """
        if self.cancel_here(run_id, who):
            return "cancelling"
        rec = self.history.run(run_id)
        if rec is None:
            raise LookupError(f"no run {run_id!r} in the history")
        if rec.status == "queued" and queue.cancel_queued(self.history.db, run_id, who):
            return "cancelled"
        if rec.node and rec.status in ("running", "waiting", "queued") and (self.node is None or rec.node != self.node.name):
            # Another node runs it: it reads this within its poll (server/node.py) and cancels the run itself.
            self.history.ask_cancel(run_id, who)
            return f"asked node {rec.node}"
        if rec.status not in ("running", "waiting"):
            raise RunConflict(f"run {run_id} has already ended: {rec.status}")
        here = socket.gethostname()
        if rec.host != here:
            raise RunConflict(f"run {run_id} runs on host {rec.host} (pid {rec.pid}), not on {here}: cancel it there (Ctrl-C, or kill -TERM {rec.pid})")
        if not admin:
            raise NotAllowed(f"run {run_id} was started from the command line (pid {rec.pid}): only an admin token may signal its process")
        gone = RunConflict(f"run {run_id}: process {rec.pid} is not the run's process any more (it ended, and its PID may be another's)")
        if not rec.pid or rec.pid == os.getpid() or not rec.pid_start or not _is_sshexec(rec.pid):
            raise gone  # without pid_start (an older sshexec recorded it) there is no telling: nothing is signalled
        self.history.ask_cancel(run_id, f"{who} through sshexec serve on {here} (pid {os.getpid()})")
        if not signal_process(rec.pid, rec.pid_start, signal.SIGTERM):
            raise gone
        log.info("run %s: sent SIGTERM to process %s", run_id, rec.pid)
        return "signalled"

    def cancel_here(self, run_id: str, who: str, *, fenced: bool = False) -> bool:
        """Cancel a run of this server (as Ctrl-C would), saying who asked; False if it is not one."""
        with self._lock:
            entry = self.active.get(run_id)
        if entry is None:
            return False
        runner = entry[0]
        if not runner.cancel.is_set():
            runner.cancelled_by = runner.cancelled_by or who
            runner.cancel.set()
        return True

    def wait_idle(self, timeout: float) -> bool:
        """Wait until this server runs nothing (a drain); True if it got there within `timeout` s."""
        deadline = time.monotonic() + timeout
        while self.active_ids():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True

    def shutdown(self, timeout: float) -> list[str]:
        """Cancel every run of this server and wait up to `timeout` s for them to be recorded; the ids still running."""
        with self._lock:
            entries = list(self.active.values())
        for runner, _ in entries:
            runner.cancel.set()
        deadline = time.monotonic() + timeout
        for _, thread in entries:
            thread.join(max(0.0, deadline - time.monotonic()))
        return [runner.run_id for runner, thread in entries if thread.is_alive()]

    def cancel_all(self) -> None:
        """At SIGTERM: tell every run to stop, at once (shutdown() waits for them later)."""
        with self._lock:
            entries = list(self.active.values())
        for runner, _ in entries:
            runner.cancel.set()


def _status_of(exc) -> dict:
    """How a run that could not start ends: bad input (exit 2) is "error" with the exit code of the error."""
    from ..errors import exit_code_for

    return {"status": "error", "exit_code": exit_code_for(exc) if isinstance(exc, SshexecError) else 2}


def _is_sshexec(pid: int) -> bool:
    """The PID runs sshexec (its start time, checked by signal_process, says whether it is the run's)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"sshexec" in cmdline
