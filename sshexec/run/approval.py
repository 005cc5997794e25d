"""An approval step: the run waits for a person's decision, holding nothing on any worker.

The step has no container, no pool and no worker: nothing is connected, pulled
or started for it, and no worker slot (max_steps) is taken. Its row in the
history has the worker "-" and the status "waiting", and so has the run, until
a decision comes (store/approvals.py): approve, and the step succeeds; reject,
or no decision within the step's timeout, and it fails (exit 1), so that the
`if: failure` steps run as after any failure. A cancel (Ctrl-C, the server's
cancel) ends the wait as cancelled.

What a run holds while it waits: the runbook's own `lock:`, if it has one, is
held from the run's start to its end, a wait included (the lock keeps the whole
release apart from another; a step's lock is taken only around that step, and
an approval step has none). The run's heartbeat goes on where the run has been
already. So a long wait under a runbook lock keeps other runs of that lock out:
give the approval a timeout that fits.

With the cluster (issue 20), a node lost while a run waits leaves nothing on
any worker: a requeued run can wait again on another node.
"""

from __future__ import annotations

import time
from typing import Callable

from ..config.runbook import Step
from ..core.secrets import Masker
from ..core.status import CANCELLED, FAILED, SUCCEEDED
from ..step.result import StepResult
from ..store.approvals import APPROVED, POLL, REJECTED, ApprovalStore
from ..store.history import History
from ..store.notify import announce


def wait_for_approval(
    run_id: str, seq: int, step: Step, *, history: History, masker: Masker, cancel, note: Callable[[str, str, str], None],
    on_event: Callable[[str, str, object], None], poll: float = POLL,
) -> StepResult:  # fmt: skip
    """Ask, wait for the decision (or the deadline, or a cancel), and record the step's end."""
    spec = step.approval
    store = ApprovalStore(history.db)
    message = masker.mask_text(spec.message)
    asked = store.ask(run_id, seq, step.name, message=message, role=spec.role, timeout=spec.timeout)
    note("-", step.name, f"waiting for approval ({spec.role}): {message}")
    announce(history.db, run_id, "waiting", step=step.name, message=message, role=spec.role, deadline=asked.deadline)
    on_event("waiting", "-", asked)  # after announce: the command line sends what is queued when it hears this
    t0 = time.monotonic()
    decided = None
    while decided is None:
        if cancel.is_set():
            decided = store.expire(run_id, step.name, decision="cancelled")
            break
        found = store.get(run_id, step.name)
        if found is not None and found.decision is not None:
            decided = found
        elif time.time() >= asked.deadline:
            decided = store.expire(run_id, step.name)
        else:
            cancel.wait(poll)
    store.resumed(run_id)
    said = f"{decided.decision} by {decided.by}" + (f": {decided.comment}" if decided.comment else "")
    if decided.decision == "cancelled":
        status, code, said = CANCELLED, 130, "cancelled while waiting for approval"
    elif decided.decision == APPROVED:
        status, code = SUCCEEDED, 0
    else:
        status, code = FAILED, 1
        if decided.decision != REJECTED:
            said = f"no decision within {int(spec.timeout)}s: approval timed out"
    said = masker.mask_text(said)
    outputs = {"decision": decided.decision, "decided_by": decided.by or ""}
    if decided.comment:
        outputs["comment"] = masker.mask_text(decided.comment)
    history.finish_step(run_id, step.name, "-", status=status, exit_code=code, message=said, outputs=outputs)
    note("-", step.name, said)
    result = StepResult(step.name, "-", status, code, time.monotonic() - t0, said, outputs=outputs)
    on_event("approval", "-", result)
    return result
