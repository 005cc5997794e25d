"""outcome.classify: one row per way a step can end, and the rule that decides it."""

from __future__ import annotations

import pytest

from sshexec.core.status import CANCELLED, ERROR, EXIT_CODES, FAILED, SUCCEEDED, TIMED_OUT
from sshexec.errors import Cancelled, ConnectionLost, DockerError, ImageRefused, StepTimeout
from sshexec.step.outcome import Ended, Outcome, classify, with_refused_artifacts

NO_SH = 'docker: Error response from daemon: failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: exec: "/bin/sh": stat /bin/sh: no such file or directory: unknown.'
LOST = ConnectionLost("w1", "connection to w1 lost", hint="check it")


def ended(**kw) -> Ended:
    base = dict(step="s", worker="w1", image="img:1", syntax="bash", timeout=3, exit_code=0, executor_started=True)
    return Ended(**{**base, **kw})


ROWS = [
    # id, what was seen, status, exit code, message (None: no message), error class (None: no error)
    ("success", ended(), SUCCEEDED, 0, None, None),
    ("script-exit-7", ended(exit_code=7), FAILED, 7, "the script exited with code 7", None),
    ("fail-step", ended(exit_code=1, failed="because"), FAILED, 1, "because", None),
    ("fail-step-empty-message", ended(exit_code=1, failed=""), FAILED, 1, "", None),
    # The defect of issue 12: a script's own 127 with "docker:" in its stderr is the script's failure.
    ("script-127-docker-words", ended(exit_code=127, stderr_tail="sh: docker: not found\ndocker: Error response from daemon: OCI runtime"), FAILED, 127, "the script exited with code 127", None),
    ("script-126", ended(exit_code=126, stderr_tail="sh: ./x: Permission denied"), FAILED, 126, "the script exited with code 126", None),
    ("script-125", ended(exit_code=125), FAILED, 125, "the script exited with code 125", None),
    ("no-bin-sh", ended(exit_code=127, executor_started=False, stderr_tail=NO_SH), ERROR, 127, "the container did not start: " + NO_SH, ImageRefused),
    ("docker-run-125", ended(exit_code=125, executor_started=False, stderr_tail="docker: Error response from daemon: Conflict."), ERROR, 125, "the container did not start: docker: Error response from daemon: Conflict.", DockerError),
    ("executor-died-early", ended(exit_code=2, executor_started=False, stderr_tail="run.sh: 30: Syntax error"), ERROR, 2, "the executor stopped before the script started (exit 2): run.sh: 30: Syntax error", DockerError),
    ("missing-interpreter", ended(exit_code=127, missing="python3", syntax="python"), ERROR, 127, "image img:1 has no python3 (script.syntax is python)", ImageRefused),
    ("missing-beats-not-started", ended(exit_code=127, missing="bash", executor_started=False), ERROR, 127, "image img:1 has no bash (script.syntax is bash)", ImageRefused),
    ("timeout", ended(exit_code=None, aborted="timeout"), TIMED_OUT, 124, "timed out after 3s; the container was stopped", StepTimeout),
    ("timeout-after-exit-code", ended(exit_code=137, aborted="timeout", failed="x"), TIMED_OUT, 124, "timed out after 3s; the container was stopped", StepTimeout),
    ("cancel", ended(exit_code=130, aborted="cancel"), CANCELLED, 130, "cancelled", Cancelled),
    ("connection-lost", ended(exit_code=None, lost=LOST), ERROR, None, "w1: connection to w1 lost", ConnectionLost),
    ("success-without-announcement", ended(executor_started=False), SUCCEEDED, 0, None, None),
]


@pytest.mark.parametrize("seen, status, code, message, error", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_classify(seen, status, code, message, error):
    out = classify(seen)
    assert (out.status, out.exit_code, out.message) == (status, code, message)
    if error is None:
        assert out.error is None
    else:
        assert type(out.error) is error
        assert out.error.message.startswith(("w1: ", "step s on w1"))


def test_every_status_has_its_exit_code():
    assert EXIT_CODES == {SUCCEEDED: 0, FAILED: 1, TIMED_OUT: 124, ERROR: 3, CANCELLED: 130}


def test_the_error_of_a_refused_container_keeps_the_hint():
    out = classify(ended(exit_code=127, executor_started=False, stderr_tail=NO_SH))
    assert "the image needs /bin/sh" in out.error.hint
    assert classify(ended(exit_code=None, lost=LOST)).error is LOST


@pytest.mark.parametrize(
    "before, refused, after",
    [
        (Outcome(SUCCEEDED, 0), [], Outcome(SUCCEEDED, 0)),
        (Outcome(SUCCEEDED, 0), ["artifact x is outside the step"], Outcome(FAILED, 1, "artifact x is outside the step")),
        (Outcome(FAILED, 7, "the script exited with code 7"), ["a", "b"], Outcome(FAILED, 7, "the script exited with code 7; a; b")),
        (Outcome(TIMED_OUT, 124, "timed out"), ["a"], Outcome(TIMED_OUT, 124, "timed out; a")),
    ],
    ids=["none-refused", "success-becomes-failure", "failure-keeps-its-code", "timeout-stays"],
)
def test_refused_artifacts(before, refused, after):
    assert with_refused_artifacts(before, refused) == after
