"""Release semantics as pure decisions: rolling batches, run conditions, step retries, re-runs.

Nothing here connects, sleeps or records: run.py asks, and the answers are
pinned by the tables of tests/unit/test_plan.py.

- `Share`: `N` or `"P%"` of a step's workers. A batch rounds up (at least
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

import math
import random
from dataclasses import dataclass, field
from typing import Iterable, Sequence, TypeVar

from .core.retry import delays
from .core.status import CANCELLED, ERROR, SEVERITY, SKIPPED, SUCCEEDED
from .errors import ConnectionLost, DaemonDown, RemoteTimeout, UnreachableError

T = TypeVar("T")

CONDITIONS = ("success", "failure", "always")
ORDERS = ("inventory", "random")
RETRY_ON = ("infrastructure", "any")


# -- N or "P%" of a step's workers ---------------------------------------------------------


@dataclass(frozen=True)
class Share:
    """A count of workers, or a percentage of them (`percent` set, `count` None)."""

    count: int | None = None
    percent: int | None = None

    def __str__(self) -> str:
        return f"{self.percent}%" if self.percent is not None else str(self.count)

    def at_least_one(self, total: int) -> int:
        """A batch size: a percentage rounds up, and a batch holds at least one worker."""
        if self.percent is None:
            return max(1, min(self.count or 1, total))
        return max(1, math.ceil(self.percent * total / 100))

    def rounded_down(self, total: int) -> int:
        """A failure limit: a percentage rounds down (10% of 4 workers tolerates none)."""
        if self.percent is None:
            return self.count or 0
        return self.percent * total // 100


def parse_share(value: object, *, minimum: int) -> Share:
    """`N` (at least `minimum`) or `"P%"` (from `minimum`% to 100%); ValueError saying what is accepted."""
    accepted = f'a whole number of workers (at least {minimum}) or a percentage like "25%" ({minimum}% to 100%)'
    if isinstance(value, bool):
        raise ValueError(f"use {accepted}, not {value!r}")
    if isinstance(value, int):
        if value < minimum:
            raise ValueError(f"use {accepted}, not {value}")
        return Share(count=value)
    if isinstance(value, str):
        text = value.strip()
        digits = text[:-1].strip()
        if text.endswith("%") and digits.isdigit():
            percent = int(digits)
            if minimum <= percent <= 100:
                return Share(percent=percent)
            raise ValueError(f"use {accepted}, not {value!r}")
        if text.isdigit():
            return parse_share(int(text), minimum=minimum)
    raise ValueError(f"use {accepted}, not {value!r}")


# -- the keys of a step ------------------------------------------------------------------------


@dataclass(frozen=True)
class Rolling:
    """`rolling:` of a `target: each` step. `batch` None: every worker at once."""

    batch: Share | None = None
    max_failures: Share = Share(count=0)
    pause: float = 0.0
    order: str = "inventory"


@dataclass(frozen=True)
class Retries:
    """`retries:` of a step: `attempts` in all (the first one included)."""

    attempts: int
    delay: float = 5.0
    backoff: float = 2.0
    on: str = "infrastructure"

    def waits(self) -> list[float]:
        """The waits between attempts, before jitter (retry.delays: the worst case)."""
        return delays(self.attempts, self.delay, self.backoff)


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
            return Verdict(True) if self.failed else Verdict(False, "not run (if: failure): no step failed")
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
    # docker_errors marks a pull or login that met a registry or network hiccup (and run.py a
    # `target: any` step that found no healthy worker for such reasons) as transient.
    return bool(getattr(error, "transient", False))


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
