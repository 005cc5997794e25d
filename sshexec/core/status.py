"""Statuses of runs and steps, and the exit code each one means: the one place they are named.

A step on one worker ends as one of STEP_STATUSES; a run as one of
RUN_STATUSES. SEVERITY orders the bad ones: within a step the worst of its
workers decides, across steps the first bad one (run/policy.py).
"""

from __future__ import annotations

SUCCEEDED = "succeeded"
FAILED = "failed"  # the script failed (exit code, fail_step, refused artifacts)
TIMED_OUT = "timed-out"
ERROR = "error"  # infrastructure: the way to the script failed (exit 3)
CANCELLED = "cancelled"
SKIPPED = "skipped"  # a worker (or a whole step) that was never started, with the reason
RUNNING = "running"
INTERRUPTED = "interrupted"  # a run whose process died (shown as this), or whose node was lost (stored as this)
QUEUED = "queued"  # submitted (sshexec submit, POST /api/runs, a schedule): waiting for a server node to claim it
WAITING = "waiting"  # a run (and its approval step) waiting for a person's decision (run/approval.py)

EXIT_CODES = {SUCCEEDED: 0, FAILED: 1, TIMED_OUT: 124, ERROR: 3, CANCELLED: 130}

# Within one step, the worst status decides (a cancel outranks an error, an error a failure...).
SEVERITY = [SUCCEEDED, FAILED, TIMED_OUT, ERROR, CANCELLED]
BAD = (FAILED, TIMED_OUT, ERROR)  # what counts against a rolling step's max_failures

STEP_STATUSES = (RUNNING, WAITING, SUCCEEDED, FAILED, TIMED_OUT, ERROR, CANCELLED, SKIPPED)
RUN_STATUSES = (QUEUED, RUNNING, WAITING, SUCCEEDED, FAILED, TIMED_OUT, ERROR, CANCELLED, INTERRUPTED)


def check_run_status(value: str | None) -> str | None:
    """A run status given as a filter (`runs --status`, `?status=`): None, or one of RUN_STATUSES;
    InputError (exit 2, HTTP 422) naming the valid ones otherwise."""
    if value is None or value in RUN_STATUSES:
        return value
    import difflib

    from ..errors import InputError

    close = difflib.get_close_matches(value, RUN_STATUSES, n=1)
    guess = f"did you mean {close[0]!r}? " if close else ""
    raise InputError(f"unknown run status {value!r}: {guess}a run's status is one of {', '.join(RUN_STATUSES)}")
