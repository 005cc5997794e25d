"""The release decisions, as tables: shares and rounding, batches, whether a batch or a step
runs, whether an attempt is retried, and what a --retry-failed runs again (sshexec/run/policy.py)."""

from __future__ import annotations

import random

import pytest

from sshexec.config.release import Retries, Rolling, Share, parse_share
from sshexec.errors import (
    AuthError,
    ChangedHostKey,
    ConnectionLost,
    DaemonDown,
    DockerPermission,
    ImageRefused,
    LoginError,
    PullError,
    RemoteTimeout,
    StepTimeout,
    UnreachableError,
    WorkerError,
)
from sshexec.run import policy as plan
from sshexec.run.policy import Earlier, RunState


@pytest.mark.parametrize(
    "value, minimum, share",
    [
        (1, 1, Share(count=1)),
        (7, 1, Share(count=7)),
        ("25%", 1, Share(percent=25)),
        ("100%", 1, Share(percent=100)),
        (" 50 % ", 1, Share(percent=50)),
        ("3", 1, Share(count=3)),
        (0, 0, Share(count=0)),
        ("0%", 0, Share(percent=0)),
    ],
)
def test_shares_accepted(value, minimum, share):
    assert parse_share(value, minimum=minimum) == share


@pytest.mark.parametrize(
    "value, minimum",
    [(0, 1), ("0%", 1), ("150%", 1), ("101%", 0), (-1, 0), ("-5%", 0), (True, 1), (False, 0), (2.5, 1), ("half", 1), ("%", 1), (None, 1), ([2], 1)],
)
def test_shares_refused_say_what_is_accepted(value, minimum):
    with pytest.raises(ValueError, match="a whole number of workers .* or a percentage"):
        parse_share(value, minimum=minimum)


@pytest.mark.parametrize(
    "share, total, batch, limit",
    [
        # a batch rounds up and holds at least one worker; a failure limit rounds down
        (Share(percent=25), 4, 1, 1),
        (Share(percent=50), 3, 2, 1),
        (Share(percent=10), 4, 1, 0),
        (Share(percent=1), 1000, 10, 10),
        (Share(percent=34), 3, 2, 1),
        (Share(percent=100), 5, 5, 5),
        (Share(percent=0), 5, 1, 0),
        (Share(count=2), 4, 2, 2),
        (Share(count=9), 4, 4, 9),  # a batch bigger than the pool is the pool
    ],
)
def test_rounding(share, total, batch, limit):
    assert share.at_least_one(total) == batch
    assert share.rounded_down(total) == limit


W = ["w1", "w2", "w3", "w4", "w5"]


@pytest.mark.parametrize(
    "rolling, expected",
    [
        (None, [W]),
        (Rolling(), [W]),
        (Rolling(batch=Share(count=2)), [["w1", "w2"], ["w3", "w4"], ["w5"]]),
        (Rolling(batch=Share(percent=40)), [["w1", "w2"], ["w3", "w4"], ["w5"]]),
        (Rolling(batch=Share(percent=50)), [["w1", "w2", "w3"], ["w4", "w5"]]),
        (Rolling(batch=Share(count=1)), [[w] for w in W]),
        (Rolling(batch=Share(count=10)), [W]),
    ],
)
def test_batches_in_inventory_order(rolling, expected):
    assert plan.batches(W, rolling) == expected


def test_random_order_draws_from_the_rng_and_keeps_every_worker_once():
    rolling = Rolling(batch=Share(count=2), order="random")
    a = plan.batches(W, rolling, random.Random(1))
    b = plan.batches(W, rolling, random.Random(1))
    assert a == b and [len(g) for g in a] == [2, 2, 1]
    assert sorted(w for g in a for w in g) == W
    orders = {tuple(w for g in plan.batches(W, rolling, random.Random(seed)) for w in g) for seed in range(20)}
    assert len(orders) > 1, "random order must not be the inventory's every time"


def test_no_workers_no_batches():
    assert plan.batches([], Rolling(batch=Share(count=2))) == []


@pytest.mark.parametrize(
    "rolling, total, limit",
    [(None, 4, 0), (Rolling(), 4, 0), (Rolling(max_failures=Share(count=1)), 4, 1), (Rolling(max_failures=Share(percent=25)), 4, 1), (Rolling(max_failures=Share(percent=25)), 3, 0)],
)
def test_failure_limit(rolling, total, limit):
    assert plan.failure_limit(rolling, total) == limit


@pytest.mark.parametrize(
    "failures, limit, cancelled, go, words",
    [
        (0, 0, False, True, ""),
        (1, 0, False, False, "1 worker failed by batch 1 of 2, more than max_failures 0"),
        (1, 1, False, True, ""),
        (2, 1, False, False, "2 workers failed by batch 1 of 2, more than max_failures 1"),
        (0, 0, True, False, "the run was cancelled after batch 1 of 2"),
        (5, 9, True, False, "cancelled"),
    ],
)
def test_next_batch(failures, limit, cancelled, go, words):
    v = plan.next_batch(failures=failures, limit=limit, cancelled=cancelled, done=1, total=2)
    assert v.go is go
    assert words in v.reason and (go or v.reason.startswith("not started"))


@pytest.mark.parametrize(
    "statuses, expected",
    [
        ([], "succeeded"),
        (["succeeded", "skipped"], "succeeded"),
        (["succeeded", "failed", "skipped"], "failed"),
        (["failed", "error"], "error"),
        (["timed-out", "failed"], "timed-out"),
        (["error", "cancelled"], "cancelled"),
    ],
)
def test_a_step_status_is_its_worst_worker_s(statuses, expected):
    assert plan.step_status(statuses) == expected


# Each row: what happened so far (a list of (step statuses, failures, limit), or "cancel"),
# then whether a success / failure / always step runs, and the run's status (its exit code).
@pytest.mark.parametrize(
    "history, success, failure, always, status",
    [
        ([], True, False, True, "succeeded"),
        ([(["succeeded"], 0, 0)], True, False, True, "succeeded"),
        ([(["failed"], 1, 0)], False, True, True, "failed"),
        ([(["timed-out"], 1, 0)], False, True, True, "timed-out"),
        ([(["error"], 1, 0)], False, True, True, "error"),
        # max_failures tolerated it: the run goes on as if successful, but its exit code stays the failure's
        ([(["failed", "succeeded", "succeeded", "succeeded"], 1, 1)], True, False, True, "failed"),
        ([(["failed", "failed", "succeeded"], 2, 1)], False, True, True, "failed"),
        # the first failure decides the exit code; a failing `failure` step does not change it
        ([(["failed"], 1, 0), (["error"], 1, 0)], False, True, True, "failed"),
        ([(["error"], 1, 0), (["succeeded"], 0, 0), (["failed"], 1, 0)], False, True, True, "error"),
        # a Ctrl-C: only `always` steps run; 130 unless a failure came first
        (["cancel"], False, False, True, "cancelled"),
        ([(["cancelled", "failed"], 1, 0)], False, False, True, "cancelled"),
        ([(["failed"], 1, 0), "cancel"], False, False, True, "failed"),
        ([(["succeeded"], 0, 0), "cancel", (["failed"], 1, 0)], False, False, True, "cancelled"),
        # a second cancel skips the `always` steps too
        (["cancel", (["cancelled"], 0, 0), "cancel"], False, False, False, "cancelled"),
        # an `always` step that fails first puts the run on the failure path
        ([(["succeeded"], 0, 0), (["failed"], 1, 0)], False, True, True, "failed"),
        ([(["skipped"], 0, 0)], True, False, True, "succeeded"),
    ],
)
def test_run_conditions(history, success, failure, always, status):
    state = RunState()
    for i, h in enumerate(history):
        if h == "cancel":
            state.cancel()
        else:
            statuses, failures, limit = h
            state.step_done(f"s{i}", statuses, failures=failures, limit=limit)
    assert (state.should_run("success").go, state.should_run("failure").go, state.should_run("always").go) == (success, failure, always)
    assert state.status == status


def test_reasons_for_steps_that_do_not_run():
    state = RunState()
    assert state.should_run("failure").reason == "not run (if: failure): no step failed"
    tolerant = RunState()
    tolerant.step_done("deploy", ["succeeded", "failed"], failures=1, limit=1)
    assert tolerant.should_run("failure").reason == "not run (if: failure): no step failed (the failures of deploy were within max_failures, so tolerated)"
    state.step_done("deploy", ["failed"], failures=1)
    assert state.should_run("success").reason == "not run: step deploy failed"
    state.cancel()
    assert state.should_run("failure").reason == "not run (if: failure): the run was cancelled"
    state.cancel()
    assert state.should_run("always").reason == "not run (if: always): the run was cancelled twice"


def transient(err):
    err.transient = True
    return err


@pytest.mark.parametrize(
    "error, infra",
    [
        (ConnectionLost("w1", "connection to w1 lost"), True),
        (UnreachableError("w1", "cannot reach"), True),
        (RemoteTimeout("w1", "upload stalled"), True),
        (DaemonDown("w1", "daemon down"), True),
        (transient(PullError("w1", "503")), True),
        (transient(LoginError("w1", "registry did not answer")), True),
        (transient(WorkerError("w1", "no healthy worker")), True),
        (PullError("w1", "image not found"), False),
        (LoginError("w1", "401"), False),
        (AuthError("w1", "refused"), False),
        (ChangedHostKey("w1", "changed", fingerprint="SHA256:x"), False),
        (DockerPermission("w1", "denied"), False),
        (ImageRefused("w1", "ENTRYPOINT"), False),
        (StepTimeout("timed out"), False),
        (None, False),
    ],
)
def test_infrastructure(error, infra):
    assert plan.is_infrastructure(error) is infra


LOST = ConnectionLost("w1", "lost")


@pytest.mark.parametrize(
    "status, error, on, again",
    [
        ("succeeded", None, "any", False),
        ("failed", None, "infrastructure", False),
        ("failed", None, "any", True),
        ("timed-out", StepTimeout("t"), "infrastructure", False),
        ("timed-out", StepTimeout("t"), "any", True),
        ("error", LOST, "infrastructure", True),
        ("error", ImageRefused("w1", "x"), "infrastructure", False),
        ("error", ImageRefused("w1", "x"), "any", True),
        ("cancelled", LOST, "any", False),
        ("skipped", None, "any", False),
    ],
)
def test_retry_wanted(status, error, on, again):
    assert plan.retry_wanted(status, error, on) is again


def test_retry_waits_are_retry_delays():
    from sshexec.core.retry import delays

    r = Retries(attempts=4, delay=2, backoff=3)
    assert r.waits() == delays(4, 2, 3) == [2, 6, 18]
    assert Retries(attempts=1).waits() == []


def rows(*triples, run="R1"):
    return [Earlier("s", w, status, {"X": w}, run) for w, status in triples]


@pytest.mark.parametrize(
    "target, condition, earlier, run, carried",
    [
        # target: each -- exactly the workers that did not succeed run again
        ("each", "success", rows(("w1", "succeeded"), ("w2", "succeeded"), ("w3", "failed"), ("w4", "skipped")), ["w3", "w4"], ["w1", "w2"]),
        ("each", "success", rows(("w1", "succeeded"), ("w2", "cancelled"), ("w3", "timed-out"), ("w4", "error")), ["w2", "w3", "w4"], ["w1"]),
        ("each", "success", [], ["w1", "w2", "w3", "w4"], []),  # never reached
        ("each", "success", rows(*[(w, "succeeded") for w in ["w1", "w2", "w3", "w4"]]), [], ["w1", "w2", "w3", "w4"]),
        ("each", "success", rows(("w1", "succeeded"), ("w9", "succeeded")), ["w2", "w3", "w4"], ["w1"]),  # w9 left the pool
        # target: any -- carried when it succeeded somewhere
        ("any", "success", rows(("w2", "skipped"), ("w3", "succeeded")), [], ["w3"]),
        ("any", "success", rows(("w2", "error")), ["w1", "w2", "w3", "w4"], []),
        # if: failure / always are never carried: they answer what happens in the retry
        ("each", "failure", rows(("w1", "succeeded")), ["w1", "w2", "w3", "w4"], []),
        ("any", "always", rows(("w1", "succeeded")), ["w1", "w2", "w3", "w4"], []),
    ],
)
def test_rerun(target, condition, earlier, run, carried):
    r = plan.rerun(target=target, condition=condition, workers=["w1", "w2", "w3", "w4"], earlier=earlier)
    assert list(r.run) == run
    assert [e.worker for e in r.carried] == carried
    assert all(e.outputs == {"X": e.worker} for e in r.carried)
