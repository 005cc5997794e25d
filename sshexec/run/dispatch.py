"""How a run carries out one step on its workers: `target: each` batch after batch, `target: any`
on one worker with a free slot, each try of `retries:`, and the results of skipped, carried and
crashed workers, each recorded in the history as it happens.

The Runner makes one `StepDispatch` per run and hands it every step with its workers, what a
--retry-failed carries over, and how to make a worker's StepContext.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from typing import Callable

from ..config.inventory import Worker
from ..config.runbook import Step
from ..core.fanout import DEFAULT_PARALLEL, fan_out
from ..core.secrets import Masker
from ..core.status import BAD, CANCELLED, ERROR, SKIPPED, SUCCEEDED
from ..errors import Cancelled, NoFreeSlot, SshexecError, WorkerError
from ..step.execute import run_step
from ..step.result import StepContext, StepResult
from ..store.history import History
from ..worker.slots import SlotWait
from . import policy as plan
from .attempts import Attempt, tries
from .policy import is_unhealthy
from .result import StepRun
from .sessions import SWEEP_GRACE, Sessions

log = logging.getLogger("sshexec")

Event = Callable[[str, str, object], None]
Context = Callable[[Worker], StepContext]


class StepDispatch:
    """Carries out the steps of run `run_id` on their workers, through `sessions`, recording each in `history`.

    `note(worker, step, text)` adds a line of sshexec's own to the run's log;
    `unusable` names, per step, the outputs a retry could not carry over.
    """

    def __init__(
        self, run_id: str, *, sessions: Sessions, history: History, masker: Masker, note: Callable[[str, str, str], None],
        cancel: threading.Event, on_event: Event | None = None, parallel: int = DEFAULT_PARALLEL, any_order: str = "random",
        rng: random.Random | None = None, unusable: dict[str, tuple[str, ...]] | None = None,
    ):  # fmt: skip
        self.run_id = run_id
        self.sessions, self.history, self.masker, self._note = sessions, history, masker, note
        self.cancel = cancel
        self.on_event: Event = on_event or (lambda kind, worker, data: None)
        self.parallel, self.any_order, self.rng = parallel, any_order, rng or random.Random()
        self.unusable = unusable or {}

    def run(self, seq: int, step: Step, workers: list[Worker], carried: tuple[plan.Earlier, ...], context: Context) -> StepRun:
        """The step on `workers` (those carried over from an earlier run are not run again)."""
        results = [self._carried(seq, step, e) for e in carried]
        if not workers:
            return StepRun(results)
        if step.target == "each":
            ran = self._each(seq, step, workers, context)
            return StepRun(results + ran.results, ran.limit)
        # target: any -- prefer a worker this run already talks to, else any, at random
        # (or in inventory order with any_order="inventory"); a retry prefers the others.
        ordered = self.any_order == "inventory"
        order = sorted(workers, key=lambda w: (not self.sessions.is_connected(w.name), 0 if ordered else random.random()))

        def once(n: int, failed_on: list[str]) -> StepResult:
            return self._any(seq, step, sorted(order, key=lambda w: w.name in failed_on), context, attempt=n)

        res = fan_out(order[:1], lambda _: self._tries(step, once), parallel=1, cancel=self.cancel, grace=SWEEP_GRACE)
        r = next(iter(res.values()))
        return StepRun(results + [r if isinstance(r, StepResult) else self._crashed(step, order[0].name, r)])

    def _each(self, seq: int, step: Step, workers: list[Worker], context: Context) -> StepRun:
        """Every worker, batch after batch (one batch unless rolling:); those never started are skipped."""
        groups = plan.batches(workers, step.rolling, self.rng)
        limit = plan.failure_limit(step.rolling, len(workers))
        results: list[StepResult] = []
        failures = 0
        if len(groups) == 1:
            self.on_event("fanout", "", (step.name, len(workers)))
        for i, group in enumerate(groups):
            if i:
                verdict = self._between_batches(step, failures=failures, limit=limit, done=i, total=len(groups))
                if not verdict.go:
                    results += [self.skip(seq, step, w.name, verdict.reason) for rest in groups[i:] for w in rest]
                    break
                self.on_event("batch", "", (step.name, i + 1, len(groups), [w.name for w in group]))
            elif len(groups) > 1:
                self.on_event("batch", "", (step.name, 1, len(groups), [w.name for w in group]))

            def once_on(w: Worker) -> StepResult:
                return self._tries(step, lambda n, _: self._attempt(seq, step, w, context(w), attempt=n))

            res = fan_out(group, once_on, parallel=self.parallel, cancel=self.cancel, grace=SWEEP_GRACE)
            ran = [r if isinstance(r, StepResult) else self._crashed(step, name, r) for name, r in res.items()]
            failures += sum(r.status in BAD for r in ran)
            results += ran
        return StepRun(results, limit)

    def _between_batches(self, step: Step, *, failures: int, limit: int, done: int, total: int) -> plan.Verdict:
        verdict = plan.next_batch(failures=failures, limit=limit, cancelled=self.cancel.is_set(), done=done, total=total)
        pause = step.rolling.pause if step.rolling else 0
        if verdict.go and pause:
            self.on_event("pause", "", (step.name, pause))
            end = time.monotonic() + pause
            # Short waits keep the main thread answering signals; a Ctrl-C ends the pause.
            while not self.cancel.is_set() and time.monotonic() < end:
                self.cancel.wait(min(0.2, max(0.0, end - time.monotonic())))
            verdict = plan.next_batch(failures=failures, limit=limit, cancelled=self.cancel.is_set(), done=done, total=total)
        return verdict

    def _tries(self, step: Step, once: Callable[[int, list[str]], StepResult]) -> StepResult:
        """`once(attempt, workers that failed so far)`, again while step.retries allows it."""
        return tries(step.retries, once, cancel=self.cancel, on_retry=self._retrying)

    def _retrying(self, a: Attempt) -> None:
        self.on_event("attempt", a.worker, a)
        self._note(a.worker, a.step, f"attempt {a.attempt}/{a.attempts} {a.status}: {a.message}; attempt {a.attempt + 1}/{a.attempts} in {a.wait:.1f}s")

    def _attempt(
        self, seq: int, step: Step, worker: Worker, ctx: StepContext, *,
        skipped: list[SshexecError] | None = None, full: dict[str, str] | None = None, attempt: int = 1,
    ) -> StepResult | None:  # fmt: skip
        """Run the step on one worker and record it. With `skipped`, an unhealthy
        worker (nothing of the script ran) is noted there and None returned; with
        `full`, so is a worker whose max_steps slots are all busy (slots.py)."""
        attempts = step.retries.attempts if step.retries else 1
        self.history.start_step(self.run_id, seq, step.name, worker.name, attempt=attempt, attempts=attempts)
        self.on_event("step-start", worker.name, step.name)
        t0 = time.monotonic()
        try:
            result = run_step(self.sessions.get(worker), step, ctx)
        except Exception as exc:  # noqa: BLE001 - becomes the step's result
            if skipped is not None and is_unhealthy(exc):
                exc.message = self.masker.mask_text(exc.message)  # it quotes the worker: it goes to the history and the terminal
                self.history.finish_step(self.run_id, step.name, worker.name, status=SKIPPED, exit_code=None, message=exc.message, outputs={}, attempt=attempt)
                if full is not None and isinstance(exc, NoFreeSlot):
                    full[worker.name] = exc.message
                else:
                    skipped.append(exc)
                    self.on_event("skip", worker.name, exc)
                return None
            err = exc if isinstance(exc, SshexecError) else WorkerError(worker.name, f"unexpected error: {type(exc).__name__}: {exc}")
            status = CANCELLED if isinstance(exc, Cancelled) or self.cancel.is_set() else ERROR
            # The result names its worker already: "build on w2: image … not found", not "…: w2: image …".
            said = err.message.removeprefix(f"{worker.name}: ")
            result = StepResult(step.name, worker.name, status, None, time.monotonic() - t0, self.masker.mask_text(said), error=err)
        result = dataclasses.replace(result, attempt=attempt, attempts=attempts)
        self.history.finish_step(
            self.run_id, step.name, worker.name,
            status=result.status, exit_code=result.exit_code, message=result.message, outputs=result.shown_outputs(self.masker), attempt=attempt,
            image_digest=result.image_digest, bundle_hash=result.bundle_hash,
        )  # fmt: skip
        self.on_event("step-done", worker.name, result)
        return result

    def _any(self, seq: int, step: Step, order: list[Worker], context: Context, *, attempt: int = 1) -> StepResult:
        reasons: list[SshexecError] = []
        attempts = step.retries.attempts if step.retries else 1
        # Workers whose max_steps slots are all busy are tried again, after a pause, until
        # one has a free slot or the step's timeout has passed (slots.py).
        slot_wait = SlotWait(step.timeout, self.cancel, lambda text: self.on_event("slot-wait", "", text))
        full: dict[str, str] = {}
        while True:
            full.clear()
            for w in order:
                if self.cancel.is_set():
                    break
                ctx = dataclasses.replace(context(w), wait_slot=len(order) == 1)
                result = self._attempt(seq, step, w, ctx, skipped=reasons if len(order) > 1 else None, full=full if len(order) > 1 else None, attempt=attempt)
                if result is not None:
                    return result
            if not full or self.cancel.is_set() or slot_wait.expired():
                break
            try:
                slot_wait.pause(", ".join(full))
            except Cancelled:
                break
            order = [w for w in order if w.name in full]
        if self.cancel.is_set():
            return StepResult(step.name, order[0].name, CANCELLED, None, 0.0, "cancelled", attempt=attempt, attempts=attempts)
        message = f"no healthy worker in pool {step.pool}: " + "; ".join([r.message for r in reasons] + list(full.values()))
        if full:
            message = f"no free slot in pool {step.pool} within {step.timeout}s (the step's timeout): " + "; ".join(list(full.values()) + [r.message for r in reasons])
        err = WorkerError(order[0].name, message, hint="sshexec check --pool " + step.pool)
        err.transient = any(plan.is_infrastructure(r) for r in reasons)  # another attempt may find one
        result = StepResult(step.name, "-", ERROR, None, 0.0, message, error=err, attempt=attempt, attempts=attempts)
        self.on_event("step-done", "-", result)
        return result

    def skip(self, seq: int, step: Step, worker: str, reason: str) -> StepResult:
        """A worker a step never started on ("-": the whole step did not run), recorded with the reason."""
        result = StepResult(step.name, worker, SKIPPED, None, 0.0, reason)
        self.history.note_step(self.run_id, seq, step.name, worker, status=SKIPPED, message=reason, outputs={})
        self._note(worker, step.name, f"skipped: {reason}")
        self.on_event("step-skipped", worker, result)
        return result

    def _carried(self, seq: int, step: Step, earlier: plan.Earlier) -> StepResult:
        """A result of the run a retry retries, taken over with its outputs."""
        message = f"carried from run {earlier.ran_in}"
        lost = self.unusable.get(step.name, ())
        if lost:
            message += f"; not carried (stored masked): {', '.join(lost)}"
        result = StepResult(step.name, earlier.worker, SUCCEEDED, 0, 0.0, message, outputs=dict(earlier.outputs), carried_from=earlier.ran_in)
        self.history.note_step(self.run_id, seq, step.name, earlier.worker, status=SUCCEEDED, message=message, outputs=result.outputs, carried_from=earlier.ran_in)
        self._note(earlier.worker, step.name, message)
        self.on_event("carried", earlier.worker, result)
        return result

    def _crashed(self, step: Step, worker: str, exc: BaseException) -> StepResult:
        status = CANCELLED if isinstance(exc, Cancelled) else ERROR
        msg = self.masker.mask_text(str(exc))
        return StepResult(step.name, worker, status, None, 0.0, msg, error=exc if isinstance(exc, SshexecError) else None)
