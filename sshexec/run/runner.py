"""A whole run: the runbook's steps in order, on the inventory's workers, recorded in the history.

`Runner(...).run()` is the library entry point behind `sshexec run`. Output
variables of a step are visible to later steps as `STEP.NAME`; with
`target: each` every worker's value is also kept as `STEP[WORKER].NAME`, and
`STEP.NAME` is that worker's own value on the same worker.

The release semantics (rolling batches, `if:`, `retries:`, `--retry-failed`)
are decided in policy.py; this module (the run's lifecycle) and dispatch.py (a
step on its workers) carry them out and record them; sessions.py holds the
run's connections, coordination.py its locks and heartbeat.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
from dataclasses import dataclass
from typing import Callable

from ..config.inventory import Inventory, Worker
from ..config.runbook import Runbook, Step, check_against, sensitive_values
from ..config.variables import outside_problems
from ..core.fanout import DEFAULT_PARALLEL
from ..core.secrets import Masker, Secret, masked_logs
from ..core.status import BAD, CANCELLED, ERROR, EXIT_CODES, SUCCEEDED
from ..errors import InputError, Problem, SshexecError
from ..step.output import PrefixWriter
from ..step.result import StepContext, StepResult
from ..store.artifacts import RunArtifacts, size_cap
from ..store.history import History, new_run_id
from ..store.notify import announce
from ..worker.bundle import check_files
from . import policy as plan
from .approval import wait_for_approval
from .coordination import RunCoordination
from .dispatch import StepDispatch
from .policy import RunState
from .rerun import Carry
from .result import RunResult, StepRun
from .sessions import Sessions

log = logging.getLogger("sshexec")

# How a `target: any` step picks among equally good workers.
ANY_ORDERS = ("random", "inventory")

Event = Callable[[str, str, object], None]


@dataclass(frozen=True)
class Prepared:
    """What prepare() found: the run's secrets, the feeds' passwords, and the masker that hides them all."""

    secrets: dict[str, Secret]
    feed_passwords: dict[str, Secret | None]
    masker: Masker


class Runner:
    """Runs one runbook once. Not reusable.

    `carry` (rerun.load_carry) makes the run a `--retry-failed` of an earlier
    one; `rng` draws the order of `rolling: {order: random}` steps.
    """

    def __init__(
        self,
        runbook: Runbook,
        inventory: Inventory,
        *,
        extra_vars: dict[str, str] | None = None,
        only_worker: str | None = None,
        parallel: int = DEFAULT_PARALLEL,
        history: History | None = None,
        terminal: PrefixWriter | None = None,
        on_event: Event | None = None,
        environ=os.environ,
        retries: int | None = None,
        any_order: str = "random",
        started_by: str | None = None,
        carry: Carry | None = None,
        rng: random.Random | None = None,
        lock_wait: float = 0.0,
        artifact_max: int | None = None,
        run_id: str | None = None,
        claim: tuple[str, int] | None = None,
        source: str | None = None,
        latest: bool = False,
    ):
        if any_order not in ANY_ORDERS:
            raise ValueError(f"any_order must be one of {', '.join(ANY_ORDERS)}, not {any_order!r}")
        # A retry runs the images the earlier run ran (their digests), unless `latest` (run --retry-failed --latest).
        self.runbook = carry.pin(runbook) if carry is not None and not latest else runbook
        self.inventory = inventory
        self.carry = carry
        # A retry runs as the earlier run did, unless told otherwise now.
        self.extra_vars = {**(carry.variables if carry else {}), **(extra_vars or {})}
        self.given_vars = dict(extra_vars or {})  # --var of this command line (the dry run says which)
        self.only_worker = only_worker or (carry.worker if carry else None)
        self.parallel = parallel
        self.history = history  # None: the default history, opened by run() (a plan needs none)
        self.artifact_max = artifact_max or size_cap()  # bytes; a bigger artifact is refused (store/artifacts.py)
        self.terminal = terminal
        self.on_event: Event = on_event or (lambda kind, worker, data: None)
        self.environ = environ
        self.any_order = any_order
        self.started_by = started_by  # recorded in the history (the server: its token's name)
        self.source = source  # from where it was asked, for the audit trail (the server: the client's address); default: this host
        self.rng = rng or random.Random()
        self.cancel = threading.Event()
        self.interrupts = 0
        self.cancelled_by: str | None = None  # who asked from outside (the server's SIGTERM), as it said
        self.run_id = run_id or new_run_id()
        # (node, epoch): a queued run a server node claimed (store/queue.py); its start and end are
        # written only while the claim is still the node's (store/cluster.py: fencing).
        self.claim = claim
        self.fenced = False  # the run's end was not recorded: another node had found this one lost
        self.announced = False  # its end was queued for a notification endpoint (store/notify.py): something to send
        self.sessions = Sessions(self.run_id, retries=retries, cancel=self.cancel, on_event=self.on_event, parallel=parallel)
        # Locks (lock:), heartbeats and giving them back: coordination.py.
        self.coord = RunCoordination(self.run_id, sessions=self.sessions, lock_wait=lock_wait, cancel=self.cancel, on_event=self.on_event, parallel=parallel)

    # -- checks before anything is contacted ------------------------------------------

    def prepare(self) -> Prepared:
        """Validate everything that can be validated locally. InputError (exit 2) if not."""
        rb, inv = self.runbook, self.inventory
        check_against(rb, inv)
        # The CLI and the server say it first, in their words; a library caller gets it here.
        problems = outside_problems(self.extra_vars, rb, "vars.{}")
        problems += [Problem(f"{n} is sensitive: its value comes from ${rb.sensitive[n]}, never from outside", field=f"vars.{n}") for n in self.extra_vars if n in rb.sensitive]
        if problems:
            raise InputError(problems=problems)
        secrets: dict[str, Secret] = sensitive_values(rb, self.environ)
        feed_passwords: dict[str, Secret | None] = {}
        for step in rb.steps:
            if step.feed and step.feed not in feed_passwords:
                pw = inv.feed(step.feed).password()
                feed_passwords[step.feed] = Secret(pw) if pw is not None else None
        if self.only_worker:
            w = inv.worker(self.only_worker)
            for step in rb.steps:
                if step.approval is None and step.pool not in w.pools:
                    raise InputError(f"--worker {w.name} is not in pool {step.pool!r}, which step {step.name} needs")
        for step in rb.steps:
            if step.files is not None:
                check_files(step.files)  # a symlink out of files: is bad input, found before any worker is contacted
        masker = Masker([s.reveal() for s in secrets.values()] + [p.reveal() for p in feed_passwords.values() if p])
        return Prepared(secrets, feed_passwords, masker)

    def plan(self) -> dict:
        """What run() would do (`sshexec run --dry-run`), from the files alone: nothing is contacted."""
        from .dryrun import run_plan

        masker = self.prepare().masker
        earlier = self.carry.variables if self.carry else {}
        variables = []  # each variable as the run would see it, secrets masked, and where its value comes from
        for name, value in {**self.runbook.variables, **self.extra_vars}.items():
            source = "--var" if name in self.given_vars else f"--var of run {self.carry.run_id}" if name in earlier else "runbook"
            variables.append({"name": name, "value": masker.mask_text(value), "from": source, "sensitive": False})
        for name, env in self.runbook.sensitive.items():
            variables.append({"name": name, "value": "********", "from": f"${env}", "sensitive": True})
        targets = [self._targets(s) for s in self.runbook.steps]
        return run_plan(self.runbook, self.inventory, targets, retry_of=self.carry.run_id if self.carry else None, variables=variables)

    # -- the run -------------------------------------------------------------------------

    def run(self) -> RunResult:
        prepared = self.prepare()
        if self.history is None:
            self.history = History()
        # Warnings quote workers and registries (a pull retry quotes the registry's answer):
        # they pass the masker like the steps' output does.
        with masked_logs(prepared.masker):
            return self._run(prepared)

    def _run(self, p: Prepared) -> RunResult:
        t0 = time.monotonic()
        masker = p.masker
        plain = {**self.runbook.variables, **self.extra_vars}
        h = self.history
        shown = {k: masker.mask_text(v) for k, v in plain.items()}
        h.start_run(
            self.run_id, self.runbook.name, runbook_path=str(self.runbook.path.resolve()), inventory=str(self.inventory.path), variables=shown,
            started_by=self.started_by, runbook_hash=self.runbook.digest, retry_of=self.carry.run_id if self.carry else None,
            options={"worker": self.only_worker} if self.only_worker else {}, claim=self.claim,
        )  # fmt: skip
        if self.claim is None:  # a queued run's trigger was recorded when it was queued (server/runs.py, cli/cluster.py)
            self._audit_trigger(masker)
        # The log goes to the database in batches, off the step's path (store/logs.py): `logs --follow`
        # and every server sharing the database see a line within LogWriter's FLUSH plus their poll.
        log_fh = h.log_writer(self.run_id)
        log_writer = PrefixWriter(log_fh, terminal=False, flush=False)
        artifacts = RunArtifacts(h.db, self.run_id, self.artifact_max)
        writers = (log_writer,) if self.terminal is None else (log_writer, self.terminal)

        def note(worker: str, step: str, text: str) -> None:
            """A line of sshexec's own in the run's log (not the terminal: the view shows events its own way)."""
            log_writer.write(f"{worker}/{step} # ".encode(), masker.mask_text(f"sshexec: {text}\n").encode("utf-8", "replace"))

        dispatch = StepDispatch(
            self.run_id, sessions=self.sessions, history=h, masker=masker, note=note, cancel=self.cancel, on_event=self.on_event,
            parallel=self.parallel, any_order=self.any_order, rng=self.rng, unusable=self.carry.unusable if self.carry else None,
        )  # fmt: skip
        self.on_event("run-start", "", self.run_id)
        results: list[StepResult] = []
        state = RunState()
        status, message, hard = ERROR, "sshexec stopped unexpectedly", False  # until the steps say otherwise
        old_handlers = self._install_signals()
        try:
            self._connect_ahead()
            outputs: dict[str, str] = {}
            own: dict[str, dict[str, str]] = {}
            resolved: dict[str, str] | None = {} if self.runbook.mixed_digests == "refuse" else None  # step/execute.py

            def context(step: Step) -> Callable[[Worker], StepContext]:
                def of(worker: Worker) -> StepContext:
                    variables = {**plain, **{k: s.reveal() for k, s in p.secrets.items()}, **outputs, **own.get(worker.name, {})}
                    return StepContext(
                        run_id=self.run_id, variables=variables, masker=masker, writers=writers, artifacts=artifacts,
                        cancel=self.cancel, feed=self.inventory.feed(step.feed) if step.feed else None,
                        feed_password=p.feed_passwords.get(step.feed) if step.feed else None, on_event=self.on_event, owner=self.coord.owner,
                        loaders=self.runbook.loaders - self.extra_vars.keys(), resolved=resolved,
                    )  # fmt: skip

                return of

            def run_step(seq: int, step: Step) -> StepRun:
                if step.approval is not None:  # no worker: a person decides (run/approval.py)
                    return StepRun([wait_for_approval(self.run_id, seq, step, history=h, masker=masker, cancel=self.cancel, note=note, on_event=self.on_event)])
                workers, carried = self._targets(step)
                return dispatch.run(seq, step, workers, carried, context(step))

            # The heartbeat, and the runbook's lock on every worker the run may touch (coordination.py):
            # without the lock, no step runs, `always` ones included.
            blocked = self.coord.start(self.runbook.lock, [w for step in self.runbook.steps for w in self._workers(step)])
            if blocked:
                results += blocked
                state.step_done("(runbook)", [r.status for r in blocked], failures=len(blocked), messages=[r.message for r in blocked if r.message])
            for seq, step in enumerate(() if blocked else self.runbook.steps):
                if self.cancel.is_set():
                    # Counted, then cleared: an `always` step still runs after a cancel (bounded by
                    # its timeout); a second one (the server's; a second Ctrl-C raises
                    # KeyboardInterrupt at once) stops it and skips the others.
                    self.cancel.clear()
                    state.cancel()
                verdict = state.should_run(step.condition)
                if not verdict.go:
                    results.append(dispatch.skip(seq, step, "-", verdict.reason))
                    continue
                ran = self.coord.around_step(step, self._workers(step), lambda: run_step(seq, step))
                results += ran.results
                _keep_outputs(step, ran.results, outputs, own)
                bad = [r for r in ran.results if r.status in BAD or r.status == CANCELLED]
                state.step_done(
                    step.name, [r.status for r in ran.results], failures=sum(r.status in BAD for r in ran.results), limit=ran.limit,
                    messages=[f"{r.step}{'' if r.worker == '-' else ' on ' + r.worker}: {r.message}" for r in bad if r.message],
                )  # fmt: skip
            if self.cancel.is_set():
                state.cancel()
            said = [f"cancelled by {self.cancelled_by}"] if self.cancelled_by and state.cancelled else []
            status, message = state.status, "; ".join([*said, *state.messages]) or ("cancelled" if state.cancelled else None)
        except KeyboardInterrupt:
            # A second Ctrl-C: stop waiting for cleanups, but still leave a correct record.
            hard = True
            status = CANCELLED if state.status == SUCCEEDED else state.status
            message = "; ".join([*state.messages, "cancelled (forced)"])
        finally:
            self._restore_signals(old_handlers)
            leftovers = [] if hard else self.sessions.sweep(masker, forced=self.interrupts >= 2)
            self.coord.finish(hard=hard)  # every lock and heartbeat of the run, given back
            self.sessions.close()
            message = masker.mask_text(message) if message else None
            code = EXIT_CODES[status]
            try:
                log_fh.close()
            finally:
                if h.finish_run(self.run_id, status, code, message, claim=self.claim):
                    # Queued for the senders (ops/notify.py); nothing is sent from here.
                    self.announced = announce(h.db, self.run_id, status)
                else:
                    self.fenced = True
                    log.warning("run %s ended %s here, but another node had found this one lost: its record stays as that node left it", self.run_id, status)
        result = RunResult(
            self.run_id, self.runbook.name, status, code, time.monotonic() - t0, results, message, leftovers, masker,
            retry_of=self.carry.run_id if self.carry else None,
        )  # fmt: skip
        self.on_event("run-done", "", result)
        return result

    def _audit_trigger(self, masker: Masker) -> None:
        """The run's entry in the audit trail (store/audit.py): who, from where, which runbook, the names of its --var."""
        from ..store.audit import AuditLog, local_actor

        user, here = local_actor()
        detail = {"runbook": self.runbook.name, "vars": sorted(self.given_vars), "retry_of": self.carry.run_id if self.carry else None, "worker": self.only_worker}
        # try_record: the run is in the history already; a database that fails just now must not leave it "running" forever.
        AuditLog(self.history.db).try_record("run.trigger", who=self.started_by or user, source=self.source or here, target=self.run_id, detail=detail, masker=masker)

    def _asked_by(self) -> str | None:
        """Who asked this run to stop from outside (the server writes it before its SIGTERM); None if unknown.

        Read in the signal handler: a database that cannot answer must not stop the cancel, only its words."""
        try:
            return self.history.cancelled_by(self.run_id)
        except SshexecError as exc:
            log.warning("run %s: could not read who asked it to stop: %s", self.run_id, exc.message)
            return None

    def _install_signals(self):
        if threading.current_thread() is not threading.main_thread():
            return None

        signals = (signal.SIGINT, signal.SIGTERM)
        reacting = [False]

        def handler(signum, frame):
            self.interrupts += 1
            self.cancel.set()
            if signum == signal.SIGTERM and self.cancelled_by is None:
                self.cancelled_by = self._asked_by()
                if self.cancelled_by:
                    self.on_event("cancelled-by", "", self.cancelled_by)
            if reacting[0]:
                # A signal while the view reacts to the last one (Python runs this handler inside
                # the other): raising here could land inside an import the view makes (rich's,
                # say) and leave that module half made. The outer call raises when it is done.
                return
            reacting[0] = True
            try:
                told = 0
                while told < self.interrupts:
                    told = self.interrupts
                    self.on_event("cancel", "", told)
            finally:
                reacting[0] = False
            if self.interrupts >= 2:
                raise KeyboardInterrupt

        return {sig: signal.signal(sig, handler) for sig in signals}

    @staticmethod
    def _restore_signals(old) -> None:
        for sig, h in (old or {}).items():
            signal.signal(sig, h)

    def _connect_ahead(self) -> None:
        """Connect now, in the background, to every worker a later step will certainly use
        (each worker of a `target: each` step, the only worker of a pool), so that a step
        does not wait for its worker's handshake (through a bastion: two) after the step before."""
        certain: dict[str, Worker] = {}
        for step in self.runbook.steps[1:]:
            workers = self._workers(step)
            if step.target == "each" or len(workers) == 1:
                certain.update((w.name, w) for w in workers)
        first = self.runbook.steps[0]
        first_workers = self._workers(first)
        if first.target == "each" or len(first_workers) == 1:
            for w in first_workers:  # the first step connects to these at once itself
                certain.pop(w.name, None)
        self.sessions.connect_ahead(certain.values())

    def _workers(self, step: Step) -> list[Worker]:
        if step.approval is not None:
            return []
        workers = list(self.inventory.pool(step.pool))
        if self.only_worker:
            workers = [w for w in workers if w.name == self.only_worker]
        return workers

    def _targets(self, step: Step) -> tuple[list[Worker], tuple[plan.Earlier, ...]]:
        """The workers the step runs on, and what is carried over from the run a retry retries."""
        workers = self._workers(step)
        if self.carry is None:
            return workers, ()
        again = plan.rerun(target=step.target, condition=step.condition, workers=[w.name for w in workers], earlier=self.carry.rows(step.name))
        return [w for w in workers if w.name in again.run], again.carried


def _keep_outputs(step: Step, results: list[StepResult], outputs: dict[str, str], own: dict[str, dict[str, str]]) -> None:
    """Make the step's outputs visible to later steps: STEP[WORKER].NAME, and STEP.NAME (own worker / target any)."""
    for r in results:
        for k, v in r.outputs.items():
            outputs[f"{step.name}[{r.worker}].{k}"] = v
            own.setdefault(r.worker, {})[f"{step.name}.{k}"] = v
            if step.target == "any":
                outputs[f"{step.name}.{k}"] = v
