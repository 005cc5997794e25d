"""What a step's end means: its status, exit code, message and error, from what was seen.

`classify()` is a pure function of an `Ended` (what the run scriptlet, the
executor and the connection said once the container was started) to an
`Outcome`. The order of its rules is the contract:

1. a timeout or a cancel stopped the step: timed-out (124) / cancelled (130);
2. the connection was lost: error;
3. the executor found no interpreter for the script: error (ImageRefused);
4. the executor never announced itself and the exit code is not 0: the
   container or the executor did not start, so nothing of the script ran:
   error (docker_errors.container_start_error);
5. the script called fail_step: failed, with its message;
6. any other non-zero exit code is the script's own: failed;
7. else succeeded.

Rule 4 rests on the executor's "started" service message, which carries the
step's nonce: docker's own words on stderr can never forge it, and a script's
exit code 125-127 (a missing command, say) stays the script's.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..core.status import CANCELLED, ERROR, FAILED, SUCCEEDED, TIMED_OUT
from ..errors import Cancelled, ConnectionLost, ImageRefused, SshexecError, StepTimeout
from ..worker.docker_errors import container_start_error


@dataclass(frozen=True)
class Ended:
    """What is known once a step's container ended, or was stopped.

    `stderr_tail` is already masked; `failed` (fail_step's message) is not.
    """

    step: str
    worker: str
    image: str
    syntax: str
    timeout: int
    exit_code: int | None  # the run scriptlet's exit status; None if none came
    executor_started: bool = False  # the executor said "started": what ran after is the script
    aborted: str | None = None  # "timeout" | "cancel": sshexec stopped the step
    lost: ConnectionLost | None = None  # the connection died while the step ran
    missing: str | None = None  # the interpreter the executor did not find
    failed: str | None = None  # fail_step's message
    stderr_tail: str = ""


@dataclass(frozen=True)
class Outcome:
    status: str
    exit_code: int | None
    message: str | None = None
    error: SshexecError | None = field(default=None, compare=False)


def classify(e: Ended) -> Outcome:
    """The step's outcome; see the module docstring for the rules and their order."""
    where = f"step {e.step} on {e.worker}"
    if e.aborted == "timeout":
        message = f"timed out after {e.timeout}s; the container was stopped"
        return Outcome(TIMED_OUT, 124, message, StepTimeout(f"{where} {message}"))
    if e.aborted is not None:
        return Outcome(CANCELLED, 130, "cancelled", Cancelled(f"{where} was cancelled"))
    if e.lost is not None:
        return Outcome(ERROR, None, e.lost.message, e.lost)
    code = e.exit_code
    if e.missing is not None:
        message = f"image {e.image} has no {e.missing} (script.syntax is {e.syntax})"
        return Outcome(ERROR, code, message, ImageRefused(e.worker, message, hint="use an image that has that interpreter, or change script.syntax"))
    if not e.executor_started and code != 0:
        err = container_start_error(e.worker, code, e.stderr_tail)
        return Outcome(ERROR, code, err.message.removeprefix(f"{e.worker}: "), err)
    if e.failed is not None:
        return Outcome(FAILED, code, e.failed)
    if code != 0:
        return Outcome(FAILED, code, f"the script exited with code {code}")
    return Outcome(SUCCEEDED, code)


def with_refused_artifacts(outcome: Outcome, refused: list[str]) -> Outcome:
    """A step whose artifacts were refused has failed, even if its script succeeded."""
    if not refused:
        return outcome
    message = "; ".join(filter(None, [outcome.message, *refused]))
    if outcome.status == SUCCEEDED:
        return replace(outcome, status=FAILED, exit_code=outcome.exit_code or 1, message=message)
    return replace(outcome, message=message)
