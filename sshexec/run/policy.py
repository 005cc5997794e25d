"""Release semantics as pure decisions: rolling batches, run conditions, step retries, re-runs.

Nothing here connects, sleeps or records: the runner and the dispatch ask, and the answers are
pinned by the tables of tests/unit/test_plan.py.

- `Share` (config/release.py): `N` or `"P%"` of a step's workers. A batch rounds up (at least
  one worker); a failure limit rounds down (`"50%"` of 3 workers is 1).
- `batches()`: a rolling step's workers cut into batches, in inventory or
  random order. `next_batch()`: does the next batch start?
- `RunState`: where a run stands after each step (its first failure, the
  failure path, a cancel), and `should_run()` for `if: success | failure | always`.
- `retry_wanted()` / `is_infrastructure()`: is another attempt worth it?
- `rerun()`: which workers a step runs on in `--retry-failed`, and which
  results are carried over from the earlier run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Iterable, Sequence, TypeVar

from ..config.release import Rolling
from ..core.status import CANCELLED, ERROR, SEVERITY, SKIPPED, SUCCEEDED
from ..errors import ConnectError, ConnectionLost, DaemonDown, DockerMissing, DockerPermission, NoFreeSlot, RemoteTimeout, UnreachableError

T = TypeVar("T")



# -- rolling batches ---------------------------------------------------------------------------


def batches(workers: Sequence[T], rolling: Rolling | None, rng: random.Random | None = None) -> list[list[T]]:
    """The workers in the batches they start in. Without `rolling` (or `batch`), one batch of all."""
    items = list(workers)
    if rolling is not None and rolling.order == "random":
        (rng or random.Random()).shuffle(items)
    if not items:
        return []
    size = len(items) if rolling is None or rolling.batch is None else rolling.batch.at_least_one(len(items))
    return [items[i : i + size] for i in range(0, len(items), size)]


def failure_limit(rolling: Rolling | None, total: int) -> int:
    """How many of a step's `total` workers may fail before no further batch starts (default 0)."""
    return 0 if rolling is None else rolling.max_failures.rounded_down(total)


@dataclass(frozen=True)
class Verdict:
    go: bool
    reason: str = ""


def next_batch(*, failures: int, limit: int, cancelled: bool, done: int, total: int) -> Verdict:
    """Does batch `done + 1` of `total` start, after `failures` failed workers so far?"""
    if cancelled:
        return Verdict(False, f"not started: the run was cancelled after batch {done} of {total}")
    if failures > limit:
        what = f"{failures} worker{'s' if failures != 1 else ''} failed"
        return Verdict(False, f"not started: {what} by batch {done} of {total}, more than max_failures {limit}")
    return Verdict(True)


def step_status(statuses: Iterable[str]) -> str:
    """A step's status from its workers' (skipped ones count as nothing): the worst of them."""
    seen = [s for s in statuses if s != SKIPPED]
    return max(seen, key=SEVERITY.index) if seen else SUCCEEDED


# -- run conditions ------------------------------------------------------------------------------


@dataclass
class RunState:
    """Where a run stands between steps.

    `status` is the first bad status seen (it gives the exit code: a later
    `failure` or `always` step, failing or not, never changes it); `failed`
    puts the run on the failure path (a step failed beyond its max_failures);
    `cancelled` is set by the first cancel (Ctrl-C, SIGTERM, the server's),
    and a second one (`cancels`) skips the `always` steps too.
    """

    status: str = SUCCEEDED
    failed: bool = False
    failed_step: str | None = None
    cancelled: bool = False
    cancels: int = 0
    messages: list[str] = field(default_factory=list)
    tolerated: list[str] = field(default_factory=list)  # steps whose failures stayed within max_failures

    def step_done(self, step: str, statuses: Sequence[str], *, failures: int = 0, limit: int = 0, messages: Sequence[str] = ()) -> None:
        """Take in one step's results. `failures` within `limit` keep the run on its path."""
        status = step_status(statuses)
        if status == SUCCEEDED:
            return
        if self.status == SUCCEEDED:
            self.status = status
        self.messages.extend(messages)
        if status == CANCELLED:
            self.cancelled = True  # by a cancel the run counts on its own (cancel())
        elif failures > limit and not self.failed:
            self.failed, self.failed_step = True, step
        elif 0 < failures <= limit and step not in self.tolerated:
            self.tolerated.append(step)

    def cancel(self) -> None:
        """The operator cancelled (once more)."""
        self.cancelled = True
        self.cancels += 1
        if self.status == SUCCEEDED:
            self.status = CANCELLED

    def should_run(self, condition: str) -> Verdict:
        """Does a step with `if: condition` run now?"""
        if condition == "always":
            return Verdict(False, "not run (if: always): the run was cancelled twice") if self.cancels >= 2 else Verdict(True)
        if self.cancelled:
            return Verdict(False, f"not run (if: {condition}): the run was cancelled")
        if condition == "failure":
            if self.failed:
                return Verdict(True)
            # A failure within max_failures is tolerated: it does not put the run on the failure path.
            within = f" (the failures of {', '.join(self.tolerated)} were within max_failures, so tolerated)" if self.tolerated else ""
            return Verdict(False, f"not run (if: failure): no step failed{within}")
        return Verdict(False, f"not run: step {self.failed_step} failed") if self.failed else Verdict(True)


# -- retries --------------------------------------------------------------------------------------


def is_infrastructure(error: BaseException | None) -> bool:
    """A failure of the way to the script, not of the script: worth another attempt.

    The connection dropped or never came up, a remote command stalled, the daemon
    did not answer, or the registry hiccupped during a pull or login. Refused
    credentials, host keys, images and missing tools are not: they fail again.
    """
    if isinstance(error, (ConnectionLost, UnreachableError, RemoteTimeout, DaemonDown)):
        return True
    # docker_errors marks a pull or login that met a registry or network hiccup (and dispatch.py a
    # `target: any` step that found no healthy worker for such reasons) as transient.
    return bool(getattr(error, "transient", False))


def is_unhealthy(exc: BaseException) -> bool:
    """Errors that make `target: any` try another worker: nothing of the script ran yet."""
    return isinstance(exc, (ConnectError, DockerMissing, DaemonDown, DockerPermission, NoFreeSlot))


def retry_wanted(status: str, error: BaseException | None, on: str) -> bool:
    """Another attempt after this one? `on: any` retries every failure but a cancel."""
    if status in (SUCCEEDED, CANCELLED, SKIPPED):
        return False
    if on == "any":
        return True
    return status == ERROR and is_infrastructure(error)


# -- --retry-failed ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Earlier:
    """One step on one worker in the earlier run: its last attempt."""

    step: str
    worker: str
    status: str
    outputs: dict = field(default_factory=dict)
    ran_in: str = ""  # the run where it really ran (a carried result keeps its origin)


@dataclass(frozen=True)
class Rerun:
    """What a step does in a retry: the workers it runs on, and the results carried over."""

    run: tuple[str, ...]
    carried: tuple[Earlier, ...] = ()


def rerun(*, target: str, condition: str, workers: Sequence[str], earlier: Sequence[Earlier]) -> Rerun:
    """A step in `--retry-failed`, from its rows in the earlier run.

    - `if: failure` and `if: always` steps are never carried: they answer what
      happens in the retry itself, so they run (or not) by its own state.
    - `target: each`: the workers where it succeeded are carried; it runs on
      the others of its pool (failed, timed out, skipped, cancelled, never reached).
    - `target: any`: carried when it succeeded, else it runs again (on any worker).
    """
    ok = [e for e in earlier if e.status == SUCCEEDED]
    if condition != "success":
        return Rerun(run=tuple(workers))
    if target == "any":
        return Rerun(run=(), carried=(ok[-1],)) if ok else Rerun(run=tuple(workers))
    done = {e.worker for e in ok}
    return Rerun(run=tuple(w for w in workers if w not in done), carried=tuple(e for e in ok if e.worker in set(workers)))
