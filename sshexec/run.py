"""A whole run: the runbook's steps in order, on the inventory's workers, recorded in the history.

`Runner(...).run()` is the library entry point behind `sshexec run`. Output
variables of a step are visible to later steps as `STEP.NAME`; with
`target: each` every worker's value is also kept as `STEP[WORKER].NAME`, and
`STEP.NAME` is that worker's own value on the same worker.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .command import Secret
from .errors import Cancelled, InputError, SshexecError, WorkerError
from .fleet import DEFAULT_PARALLEL, fan_out
from .history import History, new_run_id
from .inventory import Inventory, Worker
from .bundle import check_files
from .runbook import Runbook, Step, check_against, sensitive_values
from .session import WorkerSession, is_unhealthy
from .outcome import CANCELLED, ERROR, EXIT_CODES, FAILED, SUCCEEDED, TIMED_OUT
from .step import StepContext, StepResult, run_step
from .stream import Masker, PrefixWriter, masked_logs

log = logging.getLogger("sshexec")

# A run's status is the worst of its steps': cancelled > error > timed-out > failed.
SEVERITY = [SUCCEEDED, FAILED, TIMED_OUT, ERROR, CANCELLED]
SWEEP_GRACE = 20.0
# How a `target: any` step picks among equally good workers.
ANY_ORDERS = ("random", "inventory")

Event = Callable[[str, str, object], None]


@dataclass
class RunResult:
    run_id: str
    runbook: str
    status: str
    exit_code: int
    duration: float
    steps: list[StepResult] = field(default_factory=list)
    message: str | None = None
    log_path: Path | None = None
    leftovers: list[str] = field(default_factory=list)  # workers that could not be cleaned
    masker: Masker | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.status == SUCCEEDED

    def outputs(self) -> dict[str, str]:
        """Every output variable as later steps see it, sensitive values masked."""
        out: dict[str, str] = {}
        by_step: dict[str, list[StepResult]] = {}
        for r in self.steps:
            by_step.setdefault(r.step, []).append(r)
        for step, results in by_step.items():
            for r in results:
                for k, v in r.shown_outputs(self.masker).items():
                    out[f"{step}[{r.worker}].{k}"] = v
                    if len(results) == 1:
                        out[f"{step}.{k}"] = v
        return dict(sorted(out.items()))

    def to_dict(self) -> dict:
        return {
            "run_id": self.run_id,
            "runbook": self.runbook,
            "status": self.status,
            "exit_code": self.exit_code,
            "duration": round(self.duration, 3),
            "message": self.message,
            "steps": [s.to_dict(self.masker) for s in self.steps],
            "outputs": self.outputs(),
            "log": str(self.log_path) if self.log_path else None,
            "leftovers": self.leftovers,
        }


class Runner:
    """Runs one runbook once. Not reusable."""

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
    ):
        self.runbook = runbook
        self.inventory = inventory
        self.extra_vars = dict(extra_vars or {})
        self.only_worker = only_worker
        self.parallel = parallel
        self.history = history or History()
        self.terminal = terminal
        self.on_event: Event = on_event or (lambda kind, worker, data: None)
        self.environ = environ
        self.retries = retries
        if any_order not in ANY_ORDERS:
            raise ValueError(f"any_order must be one of {', '.join(ANY_ORDERS)}, not {any_order!r}")
        self.any_order = any_order
        self.started_by = started_by  # recorded in the history (the server: its token's name)
        self.cancel = threading.Event()
        self.interrupts = 0
        self.sessions: dict[str, WorkerSession] = {}
        self._sessions_lock = threading.Lock()
        self.run_id = new_run_id()

    # -- checks before anything is contacted ------------------------------------------

    def prepare(self) -> None:
        """Validate everything that can be validated locally. InputError (exit 2) if not."""
        rb, inv = self.runbook, self.inventory
        check_against(rb, inv)
        self.secrets: dict[str, Secret] = sensitive_values(rb, self.environ)
        self.feed_passwords: dict[str, Secret | None] = {}
        for step in rb.steps:
            if step.feed and step.feed not in self.feed_passwords:
                pw = inv.feed(step.feed).password()
                self.feed_passwords[step.feed] = Secret(pw) if pw is not None else None
        if self.only_worker:
            w = inv.worker(self.only_worker)
            for step in rb.steps:
                if step.pool not in w.pools:
                    raise InputError(f"--worker {w.name} is not in pool {step.pool!r}, which step {step.name} needs")
        for step in rb.steps:
            if step.files is not None:
                check_files(step.files)  # a symlink out of files: is bad input, found before any worker is contacted
        self.masker = Masker([s.reveal() for s in self.secrets.values()] + [p.reveal() for p in self.feed_passwords.values() if p])

    # -- the run -------------------------------------------------------------------------

    def run(self) -> RunResult:
        self.prepare()
        # Warnings quote workers and registries (a pull retry quotes the registry's answer):
        # they pass the masker like the steps' output does.
        with masked_logs(self.masker):
            return self._run()

    def _run(self) -> RunResult:
        t0 = time.monotonic()
        plain = {**self.runbook.variables, **self.extra_vars}
        h = self.history
        shown = {k: self.masker.mask_text(v) for k, v in plain.items()}
        h.start_run(self.run_id, self.runbook.name, runbook_path=str(self.runbook.path), inventory=str(self.inventory.path), variables=shown, started_by=self.started_by)
        log_fh = open(h.log_path(self.run_id), "ab")
        # Flushed at every write: `logs --follow` and the server tail this file while the run goes on.
        writers = [PrefixWriter(log_fh, terminal=False, flush=True)]
        if self.terminal is not None:
            writers.append(self.terminal)
        self.writers = tuple(writers)
        self.on_event("run-start", "", self.run_id)
        results: list[StepResult] = []
        status, message, hard = SUCCEEDED, None, False
        old_handlers = self._install_signals()
        try:
            self._connect_ahead()
            outputs: dict[str, str] = {}
            own: dict[str, dict[str, str]] = {}
            for seq, step in enumerate(self.runbook.steps):
                if self.cancel.is_set():
                    status, message = CANCELLED, "cancelled"
                    break
                step_results = self._run_step(seq, step, plain, outputs, own)
                results += step_results
                for r in step_results:
                    for k, v in r.outputs.items():
                        outputs[f"{step.name}[{r.worker}].{k}"] = v
                        own.setdefault(r.worker, {})[f"{step.name}.{k}"] = v
                        if step.target == "any":
                            outputs[f"{step.name}.{k}"] = v
                bad = [r for r in step_results if not r.ok]
                if bad:
                    status = max((r.status for r in bad), key=SEVERITY.index)
                    message = "; ".join(f"{r.step} on {r.worker}: {r.message}" for r in bad if r.message)
                    break
            if self.cancel.is_set() and status != CANCELLED:
                status, message = CANCELLED, "cancelled"
        except KeyboardInterrupt:
            # A second Ctrl-C: stop waiting for cleanups, but still leave a correct record.
            status, message, hard = CANCELLED, "cancelled (forced)", True
        finally:
            self._restore_signals(old_handlers)
            leftovers = [] if hard else self._sweep()
            for s in self.sessions.values():
                s.close()
            message = self.masker.mask_text(message) if message else None
            code = EXIT_CODES[status]
            try:
                log_fh.close()
            finally:
                h.finish_run(self.run_id, status, code, message)
        result = RunResult(self.run_id, self.runbook.name, status, code, time.monotonic() - t0, results, message, h.log_path(self.run_id), leftovers, self.masker)
        self.on_event("run-done", "", result)
        return result

    def _install_signals(self):
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum, frame):
            self.interrupts += 1
            self.cancel.set()
            self.on_event("cancel", "", self.interrupts)
            if self.interrupts >= 2:
                raise KeyboardInterrupt

        return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}

    @staticmethod
    def _restore_signals(old) -> None:
        for sig, h in (old or {}).items():
            signal.signal(sig, h)

    def session(self, worker: Worker) -> WorkerSession:
        with self._sessions_lock:
            s = self.sessions.get(worker.name)
            if s is None:
                s = WorkerSession(worker, self.run_id, retries=self.retries, on_retry=lambda n, exc: self.on_event("retry", worker.name, (n, exc)), cancel=self.cancel)
                self.sessions[worker.name] = s
            return s

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
        for w in certain.values():
            threading.Thread(target=self.session(w).connect_ahead, name=f"sshexec-connect-{w.name}", daemon=True).start()

    def _workers(self, step: Step) -> list[Worker]:
        workers = list(self.inventory.pool(step.pool))
        if self.only_worker:
            workers = [w for w in workers if w.name == self.only_worker]
        return workers

    def _context(self, step: Step, worker: Worker, plain, outputs, own) -> StepContext:
        variables = {**plain, **{k: s.reveal() for k, s in self.secrets.items()}, **outputs, **own.get(worker.name, {})}
        return StepContext(
            run_id=self.run_id,
            variables=variables,
            masker=self.masker,
            writers=self.writers,
            artifact_dir=self.history.artifact_dir(self.run_id),
            cancel=self.cancel,
            feed=self.inventory.feed(step.feed) if step.feed else None,
            feed_password=self.feed_passwords.get(step.feed) if step.feed else None,
            on_event=self.on_event,
        )

    def _attempt(self, seq: int, step: Step, worker: Worker, ctx: StepContext, *, skipped: list[str] | None = None) -> StepResult | None:
        """Run the step on one worker and record it. With `skipped`, an unhealthy
        worker (nothing of the script ran) is noted there and None returned."""
        self.history.start_step(self.run_id, seq, step.name, worker.name)
        self.on_event("step-start", worker.name, step.name)
        t0 = time.monotonic()
        try:
            result = run_step(self.session(worker), step, ctx)
        except Exception as exc:  # noqa: BLE001 - becomes the step's result
            if skipped is not None and is_unhealthy(exc):
                exc.message = self.masker.mask_text(exc.message)  # it quotes the worker: it goes to the history and the terminal
                skipped.append(exc.message)
                self.history.finish_step(self.run_id, step.name, worker.name, status="skipped", exit_code=None, message=exc.message, outputs={})
                self.on_event("skip", worker.name, exc)
                return None
            err = exc if isinstance(exc, SshexecError) else WorkerError(worker.name, f"unexpected error: {type(exc).__name__}: {exc}")
            status = CANCELLED if isinstance(exc, Cancelled) or self.cancel.is_set() else ERROR
            result = StepResult(step.name, worker.name, status, None, time.monotonic() - t0, self.masker.mask_text(err.message), error=err)
        self.history.finish_step(
            self.run_id, step.name, worker.name,
            status=result.status, exit_code=result.exit_code, message=result.message, outputs=result.shown_outputs(self.masker),
        )  # fmt: skip
        for a in result.artifacts:
            self.history.add_artifact(self.run_id, step.name, worker.name, a.name, a.path, a.size)
        self.on_event("step-done", worker.name, result)
        return result

    def _run_step(self, seq: int, step: Step, plain, outputs, own) -> list[StepResult]:
        workers = self._workers(step)
        if step.target == "each":
            self.on_event("fanout", "", (step.name, len(workers)))
            results = fan_out(
                workers,
                lambda w: self._attempt(seq, step, w, self._context(step, w, plain, outputs, own)),
                parallel=self.parallel,
                cancel=self.cancel,
                grace=SWEEP_GRACE,
            )
            return [r if isinstance(r, StepResult) else self._crashed(step, name, r) for name, r in results.items()]
        # target: any -- prefer a worker this run already talks to, else any, at random
        # (or in inventory order with any_order="inventory").
        ordered = self.any_order == "inventory"
        order = sorted(
            workers,
            key=lambda w: (w.name not in self.sessions or not self.sessions[w.name].conn.is_open, 0 if ordered else random.random()),
        )
        res = fan_out(order[:1], lambda _: self._any(seq, step, order, plain, outputs, own), parallel=1, cancel=self.cancel, grace=SWEEP_GRACE)
        r = next(iter(res.values()))
        return [r if isinstance(r, StepResult) else self._crashed(step, order[0].name, r)]

    def _any(self, seq: int, step: Step, order: list[Worker], plain, outputs, own) -> StepResult:
        reasons: list[str] = []
        for w in order:
            if self.cancel.is_set():
                break
            ctx = self._context(step, w, plain, outputs, own)
            result = self._attempt(seq, step, w, ctx, skipped=reasons if len(order) > 1 else None)
            if result is not None:
                return result
        if self.cancel.is_set():
            return StepResult(step.name, order[0].name, CANCELLED, None, 0.0, "cancelled")
        message = f"no healthy worker in pool {step.pool}: " + "; ".join(reasons)
        err = WorkerError(order[0].name, message, hint="sshexec check --pool " + step.pool)
        result = StepResult(step.name, "-", ERROR, None, 0.0, message, error=err)
        self.on_event("step-done", "-", result)
        return result

    def _crashed(self, step: Step, worker: str, exc: BaseException) -> StepResult:
        status = CANCELLED if isinstance(exc, Cancelled) else ERROR
        msg = self.masker.mask_text(str(exc))
        return StepResult(step.name, worker, status, None, 0.0, msg, error=exc if isinstance(exc, SshexecError) else None)

    def _sweep(self) -> list[str]:
        """Remove what this run left on workers where something did not end cleanly."""
        dirty = [s for s in self.sessions.values() if s.dirty]
        if not dirty:
            return []

        def sweep(w: Worker) -> bool:
            return self.sessions[w.name].sweep()

        res = fan_out([s.worker for s in dirty], sweep, parallel=self.parallel, grace=SWEEP_GRACE, cancel=self.cancel if self.interrupts >= 2 else None)
        left = []
        for name, r in res.items():
            if r is not True:
                left.append(name)
                self.on_event("leftover", name, self.masker.mask_text(str(r)))
        return left

