"""A Runner carrying out the release semantics, without a lab: run_step is replaced by a script
of outcomes per step and worker, so batches, conditions, attempts and retries are checked exactly."""

from __future__ import annotations

import os
import random
import signal
import textwrap
import threading

import pytest
import yaml

import sshexec.run.dispatch as dispatch_mod
import sshexec.run.sessions as sessions_mod
from sshexec.config.inventory import load_inventory
from sshexec.config.runbook import load_runbook
from sshexec.core.status import CANCELLED, FAILED, SUCCEEDED
from sshexec.errors import ConnectionLost, InputError, UnreachableError
from sshexec.run.rerun import check_runbook, earlier_run, load_carry
from sshexec.run.runner import Runner
from sshexec.step.result import StepResult
from sshexec.store.history import History

WORKERS = ["w1", "w3", "w2", "w4"]  # inventory order: w3 is in the first batch of 2


@pytest.fixture
def inv(tmp_path):
    p = tmp_path / "inv.yaml"
    p.write_text(yaml.safe_dump({"workers": [{"name": w, "host": "127.0.0.1", "port": i + 1, "pools": ["linux"]} for i, w in enumerate(WORKERS)]}))
    return load_inventory(p)


def runbook(tmp_path, *steps, name="rb.yaml", variables=None):
    base = {"pool": "linux", "container": {"image": "img:1"}, "script": {"syntax": "sh", "inline": "true"}}
    p = tmp_path / name
    p.write_text(yaml.safe_dump({"name": "release", "variables": variables or {}, "steps": [{**base, **s} for s in steps]}, sort_keys=False))
    return load_runbook(p)


class Lost:
    def __init__(self, worker):
        self.error = ConnectionLost(worker, f"connection to {worker} lost")


class Script:
    """Stands in for run_step: `outcomes[(step, worker)]` is a list of what each call does, in turn
    (a status, an exception to raise, Lost, or a callable); anything not listed succeeds with outputs."""

    def __init__(self, monkeypatch, outcomes=None):
        self.outcomes = {k: list(v) for k, v in (outcomes or {}).items()}
        self.calls: list[tuple[str, str]] = []
        self.seen: dict[tuple[str, str], dict] = {}
        self._lock = threading.Lock()
        monkeypatch.setattr(dispatch_mod, "run_step", self)

    def __call__(self, session, step, ctx):
        key = (step.name, session.worker.name)
        with self._lock:
            self.calls.append(key)
            self.seen[key] = dict(ctx.variables)
            todo = self.outcomes.get(key) or [SUCCEEDED]
            what = todo.pop(0) if len(todo) > 1 else todo[0]
        if callable(what) and not isinstance(what, type):
            what = what(ctx)
        if isinstance(what, Lost):  # what run_step returns when the connection dies while the script runs
            return StepResult(step.name, session.worker.name, "error", None, 0.0, what.error.message, error=what.error)
        if isinstance(what, BaseException):
            raise what
        code = {SUCCEEDED: 0, FAILED: 1}.get(what)
        return StepResult(step.name, session.worker.name, what, code, 0.0, None if what == SUCCEEDED else f"it {what}", outputs={"Who": session.worker.name})

    def workers(self, step):
        return [w for s, w in self.calls if s == step]


def rows(history, run_id):
    return [(r["step"], r["worker"], r["status"], r["attempt"]) for r in history.steps(run_id)]


def run(rb, inv, tmp_path, **kw):
    events = []
    history = kw.pop("history", None) or History(tmp_path / "home")
    runner = Runner(rb, inv, history=history, on_event=lambda k, w, d: events.append((k, w, d)), any_order="inventory", **kw)
    return runner.run(), history, events


# -- rolling ----------------------------------------------------------------------------------


def test_a_failure_in_the_first_batch_stops_the_rollout(tmp_path, inv, monkeypatch):
    script = Script(monkeypatch, {("deploy", "w3"): [FAILED]})
    rb = runbook(tmp_path, {"name": "deploy", "target": "each", "rolling": {"batch": 2}}, {"name": "after", "target": "each"})
    result, history, events = run(rb, inv, tmp_path)
    assert (result.status, result.exit_code) == ("failed", 1)
    assert sorted(script.workers("deploy")) == ["w1", "w3"]
    assert script.workers("after") == []
    assert [(r.worker, r.status) for r in result.steps if r.step == "deploy"] == [("w1", "succeeded"), ("w3", "failed"), ("w2", "skipped"), ("w4", "skipped")]
    skipped = [r for r in result.steps if r.status == "skipped" and r.step == "deploy"]
    assert all(r.message == "not started: 1 worker failed by batch 1 of 2, more than max_failures 0" for r in skipped)
    assert ("after", "-", "skipped", 1) in rows(history, result.run_id)
    assert {(s, w): st for s, w, st, _ in rows(history, result.run_id)}[("deploy", "w4")] == "skipped"
    assert [d[:3] for k, _, d in events if k == "batch"] == [("deploy", 1, 2)]
    assert [s["status"] for s in result.view().model_dump(mode="json")["steps"]].count("skipped") == 3
    log = history.log_text(result.run_id).decode()
    assert "w4/deploy # sshexec: skipped: not started: 1 worker failed" in log


def test_max_failures_lets_the_rollout_go_on_and_the_run_still_exits_1(tmp_path, inv, monkeypatch):
    script = Script(monkeypatch, {("deploy", "w3"): [FAILED]})
    rb = runbook(tmp_path, {"name": "deploy", "target": "each", "rolling": {"batch": 2, "max_failures": 1}}, {"name": "after"}, {"name": "rollback", "if": "failure"})
    result, history, events = run(rb, inv, tmp_path)
    assert (result.status, result.exit_code) == ("failed", 1)
    assert sorted(script.workers("deploy")) == sorted(WORKERS)
    assert [r.status for r in result.steps if r.step == "deploy" and r.worker != "w3"] == ["succeeded"] * 3
    # tolerated: the run stays on the success path
    assert script.workers("after") == ["w1"] and script.workers("rollback") == []
    assert "deploy on w3: it failed" in result.message
    assert [d[:3] for k, _, d in events if k == "batch"] == [("deploy", 1, 2), ("deploy", 2, 2)]


def test_a_second_failure_beyond_max_failures_stops_at_the_next_batch(tmp_path, inv, monkeypatch):
    script = Script(monkeypatch, {("deploy", "w1"): [FAILED], ("deploy", "w2"): [FAILED]})
    rb = runbook(tmp_path, {"name": "deploy", "target": "each", "rolling": {"batch": 1, "max_failures": "25%"}})
    result, _, _ = run(rb, inv, tmp_path)
    # batches: w1 (fails: 1 <= 1), w3, w2 (fails: 2 > 1), then w4 never starts
    assert script.workers("deploy") == ["w1", "w3", "w2"]
    assert [(r.worker, r.status) for r in result.steps][-1] == ("w4", "skipped")
    assert "2 workers failed by batch 3 of 4, more than max_failures 1" in result.steps[-1].message


def test_random_order_comes_from_the_runner_s_rng(tmp_path, inv, monkeypatch):
    script = Script(monkeypatch)
    rb = runbook(tmp_path, {"name": "deploy", "target": "each", "rolling": {"batch": 1, "order": "random"}})
    run(rb, inv, tmp_path, rng=random.Random(7))
    first = script.workers("deploy")
    script.calls.clear()
    run(rb, inv, tmp_path, rng=random.Random(7))
    assert script.workers("deploy") == first and sorted(first) == sorted(WORKERS)
    expected = list(WORKERS)
    random.Random(7).shuffle(expected)
    assert first == expected


def test_a_pause_between_batches_is_announced_and_a_cancel_ends_it(tmp_path, inv, monkeypatch):
    runner_box = []

    def cancel_during_pause(kind, worker, data):
        if kind == "pause":
            runner_box[0].cancel.set()

    Script(monkeypatch)
    rb = runbook(tmp_path, {"name": "deploy", "target": "each", "rolling": {"batch": 2, "pause": 3600}})
    runner = Runner(rb, inv, history=History(tmp_path / "home"), on_event=cancel_during_pause)
    runner_box.append(runner)
    result = runner.run()  # without the cancel this would wait an hour
    assert result.status == "cancelled" and result.exit_code == 130
    assert [(r.worker, r.status) for r in result.steps] == [("w1", "succeeded"), ("w3", "succeeded"), ("w2", "skipped"), ("w4", "skipped")]
    assert "the run was cancelled after batch 1 of 2" in result.steps[-1].message


def interrupted(ctx):
    """A step during which the operator presses Ctrl-C: it ends when the run's cancel reaches it."""
    os.kill(os.getpid(), signal.SIGINT)
    assert ctx.cancel.wait(10)
    return CANCELLED


# -- run conditions -----------------------------------------------------------------------------


def test_failure_and_always_steps_after_a_failure_read_the_outputs_that_exist(tmp_path, inv, monkeypatch):
    def fail_with_output(ctx):
        return FAILED

    script = Script(monkeypatch, {("build", "w1"): [fail_with_output]})
    rb = runbook(
        tmp_path,
        {"name": "prep"},
        {"name": "build"},
        {"name": "ship"},
        {"name": "rollback", "if": "failure"},
        {"name": "notify", "if": "always"},
    )
    result, history, _ = run(rb, inv, tmp_path, only_worker="w1")
    assert [c[0] for c in script.calls] == ["prep", "build", "rollback", "notify"]
    assert (result.status, result.exit_code) == ("failed", 1)
    assert script.seen[("rollback", "w1")]["prep.Who"] == "w1"
    assert script.seen[("rollback", "w1")]["build.Who"] == "w1"  # a failed step's outputs are readable too
    assert [(r.step, r.status) for r in result.steps] == [("prep", "succeeded"), ("build", "failed"), ("ship", "skipped"), ("rollback", "succeeded"), ("notify", "succeeded")]
    assert result.steps[2].message == "not run: step build failed"


def test_failure_steps_do_not_run_when_nothing_failed(tmp_path, inv, monkeypatch):
    script = Script(monkeypatch)
    rb = runbook(tmp_path, {"name": "deploy"}, {"name": "rollback", "if": "failure"}, {"name": "notify", "if": "always"})
    result, history, _ = run(rb, inv, tmp_path)
    assert [c[0] for c in script.calls] == ["deploy", "notify"]
    assert result.exit_code == 0
    assert ("rollback", "-", "skipped", 1) in rows(history, result.run_id)


def test_a_failing_failure_step_keeps_the_first_exit_code(tmp_path, inv, monkeypatch):
    script = Script(monkeypatch, {("deploy", "w1"): [UnreachableError("w1", "cannot reach")], ("rollback", "w1"): [FAILED]})
    rb = runbook(tmp_path, {"name": "deploy"}, {"name": "rollback", "if": "failure"}, {"name": "page", "if": "failure"}, {"name": "notify", "if": "always"})
    result, _, _ = run(rb, inv, tmp_path, only_worker="w1")
    assert (result.status, result.exit_code) == ("error", 3)  # the deploy's, not the rollback's 1
    assert [c[0] for c in script.calls] == ["deploy", "rollback", "page", "notify"]
    assert "rollback on w1: it failed" in result.message


def test_an_always_step_runs_after_one_ctrl_c_and_the_exit_code_is_130(tmp_path, inv, monkeypatch):
    def after_cancel(ctx):
        assert not ctx.cancel.is_set()  # the always step gets a fresh chance
        return SUCCEEDED

    script = Script(monkeypatch, {("deploy", "w1"): [interrupted], ("cleanup", "w1"): [after_cancel]})
    rb = runbook(tmp_path, {"name": "deploy"}, {"name": "next"}, {"name": "rollback", "if": "failure"}, {"name": "cleanup", "if": "always"})
    result, _, events = run(rb, inv, tmp_path, only_worker="w1")
    assert [c[0] for c in script.calls] == ["deploy", "cleanup"]
    assert (result.status, result.exit_code) == ("cancelled", 130)
    assert [(r.step, r.status) for r in result.steps] == [("deploy", "cancelled"), ("next", "skipped"), ("rollback", "skipped"), ("cleanup", "succeeded")]
    assert ("cancel", "", 1) in events


def test_a_second_ctrl_c_ends_the_always_step_and_the_run(tmp_path, inv, monkeypatch):
    script = Script(monkeypatch, {("deploy", "w1"): [interrupted], ("cleanup", "w1"): [interrupted]})
    rb = runbook(tmp_path, {"name": "deploy"}, {"name": "cleanup", "if": "always"}, {"name": "report", "if": "always"})
    runner = Runner(rb, inv, history=History(tmp_path / "home"), only_worker="w1")
    result = runner.run()
    assert runner.interrupts == 2
    assert (result.status, result.exit_code) == ("cancelled", 130)
    assert "cancelled (forced)" in result.message
    assert ("report", "w1") not in script.calls


def test_a_second_cancel_without_signals_skips_the_other_always_steps(tmp_path, inv, monkeypatch):
    """The server cancels by setting runner.cancel: twice is like a second Ctrl-C, without the KeyboardInterrupt."""
    box = []

    def cancelled_by_the_server(ctx):
        box[0].cancel.set()
        assert ctx.cancel.wait(10)
        return CANCELLED

    script = Script(monkeypatch, {("deploy", "w1"): [cancelled_by_the_server], ("cleanup", "w1"): [cancelled_by_the_server]})
    rb = runbook(tmp_path, {"name": "deploy"}, {"name": "cleanup", "if": "always"}, {"name": "report", "if": "always"})
    runner = Runner(rb, inv, history=History(tmp_path / "home"), only_worker="w1")
    box.append(runner)
    result = runner.run()
    assert [c[0] for c in script.calls] == ["deploy", "cleanup"]
    assert [(r.step, r.status) for r in result.steps] == [("deploy", "cancelled"), ("cleanup", "cancelled"), ("report", "skipped")]
    assert result.steps[2].message == "not run (if: always): the run was cancelled twice"
    assert result.exit_code == 130


def test_a_second_ctrl_c_while_the_view_reacts_to_the_first_waits_for_it(tmp_path, inv, monkeypatch):
    told = []

    def view(kind, worker, data):
        if kind == "cancel":
            if data == 1:
                os.kill(os.getpid(), signal.SIGINT)  # the second Ctrl-C, while the view still reacts
                sum(range(10000))  # bytecode boundaries: Python runs the nested handler in here
            told.append(data)

    Script(monkeypatch, {("deploy", "w1"): [interrupted]})
    rb = runbook(tmp_path, {"name": "deploy"}, {"name": "cleanup", "if": "always"})
    runner = Runner(rb, inv, history=History(tmp_path / "home"), only_worker="w1", on_event=view)
    result = runner.run()
    # the view finished reacting to the first, then heard of the second; the run ended at once
    assert told == [1, 2]
    assert (runner.interrupts, result.exit_code) == (2, 130) and "cancelled (forced)" in result.message


# -- retries ---------------------------------------------------------------------------------------


def test_an_infrastructure_failure_is_tried_again_and_every_attempt_recorded(tmp_path, inv, monkeypatch):
    script = Script(monkeypatch, {("deploy", "w3"): [Lost("w3"), SUCCEEDED]})
    rb = runbook(tmp_path, {"name": "deploy", "target": "each", "retries": {"attempts": 3, "delay": 0}})
    result, history, events = run(rb, inv, tmp_path)
    assert result.exit_code == 0
    assert script.workers("deploy").count("w3") == 2
    w3 = next(r for r in result.steps if r.worker == "w3")
    assert (w3.attempt, w3.attempts, [e.status for e in w3.earlier]) == (2, 3, ["error"])
    assert [r for r in rows(history, result.run_id) if r[1] == "w3"] == [("deploy", "w3", "error", 1), ("deploy", "w3", "succeeded", 2)]
    (attempt,) = [d for k, _, d in events if k == "attempt"]
    assert (attempt.worker, attempt.attempt, attempt.attempts, attempt.status) == ("w3", 1, 3, "error")
    d = result.view().model_dump(mode="json")["steps"]
    assert next(s for s in d if s["worker"] == "w3")["earlier_attempts"][0]["message"] == "w3: connection to w3 lost"
    assert "w3/deploy # sshexec: attempt 1/3 error" in history.log_text(result.run_id).decode()


def test_a_script_failure_is_retried_only_with_on_any(tmp_path, inv, monkeypatch):
    script = Script(monkeypatch, {("a", "w1"): [FAILED, SUCCEEDED], ("b", "w1"): [FAILED, SUCCEEDED]})
    rb = runbook(tmp_path, {"name": "a", "retries": {"attempts": 2, "delay": 0, "on": "any"}}, {"name": "b", "retries": {"attempts": 2, "delay": 0}})
    result, _, _ = run(rb, inv, tmp_path, only_worker="w1")
    assert script.calls == [("a", "w1"), ("a", "w1"), ("b", "w1")]
    assert [(r.step, r.status, r.attempt) for r in result.steps] == [("a", "succeeded", 2), ("b", "failed", 1)]


def test_attempts_run_out(tmp_path, inv, monkeypatch):
    script = Script(monkeypatch, {("a", "w1"): [FAILED]})
    rb = runbook(tmp_path, {"name": "a", "retries": {"attempts": 3, "delay": 0, "on": "any"}})
    result, history, _ = run(rb, inv, tmp_path, only_worker="w1")
    assert len(script.calls) == 3 and result.exit_code == 1
    assert [r[3] for r in rows(history, result.run_id)] == [1, 2, 3]
    assert (result.steps[0].attempt, len(result.steps[0].earlier)) == (3, 2)


def test_target_any_moves_to_another_worker_on_retry(tmp_path, inv, monkeypatch):
    script = Script(monkeypatch, {("a", "w1"): [Lost("w1")]})
    rb = runbook(tmp_path, {"name": "a", "retries": {"attempts": 2, "delay": 0}}, {"name": "b"})
    result, history, _ = run(rb, inv, tmp_path)
    assert script.calls[:2] == [("a", "w1"), ("a", "w3")]
    assert rows(history, result.run_id)[:2] == [("a", "w1", "error", 1), ("a", "w3", "succeeded", 2)]
    assert result.exit_code == 0 and result.outputs()["a.Who"] == "w3"
    assert script.seen[("b", "w1")]["a.Who"] == "w3"


# -- --retry-failed ----------------------------------------------------------------------------------


def two_steps(tmp_path):
    return runbook(tmp_path, {"name": "deploy", "target": "each", "rolling": {"batch": 2}}, {"name": "smoke"}, {"name": "notify", "if": "always"})


def test_retry_failed_runs_exactly_what_did_not_succeed(tmp_path, inv, monkeypatch):
    rb = two_steps(tmp_path)
    Script(monkeypatch, {("deploy", "w3"): [FAILED]})
    history = History(tmp_path / "home")
    first, _, _ = run(rb, inv, tmp_path, history=history)
    assert first.exit_code == 1

    script = Script(monkeypatch)
    rec = earlier_run(history, first.run_id[:12])
    check_runbook(rec, rb.digest, force=False)
    carry = load_carry(history, rec, rb)
    second, _, events = run(rb, inv, tmp_path, history=history, carry=carry)
    assert second.exit_code == 0 and second.retry_of == first.run_id
    assert sorted(script.workers("deploy")) == ["w2", "w3", "w4"]
    assert script.workers("smoke") == ["w1"] and script.workers("notify") == ["w1"]
    carried = [r for r in second.steps if r.carried_from]
    assert [(r.step, r.worker, r.carried_from) for r in carried] == [("deploy", "w1", first.run_id)]
    # carried outputs are visible to later steps, and to the run's result
    assert script.seen[("smoke", "w1")]["deploy[w1].Who"] == "w1"
    assert second.outputs()["deploy[w1].Who"] == "w1"
    assert ("deploy", "w1", "succeeded", 1) in rows(history, second.run_id)
    assert next(r for r in history.steps(second.run_id) if r["carried_from"])["message"] == f"carried from run {first.run_id}"
    assert [k for k, _, _ in events].count("carried") == 1
    assert history.run(second.run_id).retry_of == first.run_id


def test_a_retry_of_a_retry_keeps_where_results_came_from(tmp_path, inv, monkeypatch):
    rb = two_steps(tmp_path)
    history = History(tmp_path / "home")
    Script(monkeypatch, {("deploy", "w3"): [FAILED]})
    first, _, _ = run(rb, inv, tmp_path, history=history)
    Script(monkeypatch, {("deploy", "w3"): [FAILED]})
    second, _, _ = run(rb, inv, tmp_path, history=history, carry=load_carry(history, earlier_run(history, first.run_id), rb))
    assert second.exit_code == 1
    script = Script(monkeypatch)
    third, _, _ = run(rb, inv, tmp_path, history=history, carry=load_carry(history, earlier_run(history, second.run_id), rb))
    assert sorted(script.workers("deploy")) == ["w3", "w4"]  # w2 succeeded in the second run
    assert {r.worker: r.carried_from for r in third.steps if r.carried_from} == {"w1": first.run_id, "w2": second.run_id}


def test_retry_failed_refuses_a_changed_runbook_unless_forced(tmp_path, inv, monkeypatch):
    rb = two_steps(tmp_path)
    history = History(tmp_path / "home")
    Script(monkeypatch, {("deploy", "w3"): [FAILED]})
    first, _, _ = run(rb, inv, tmp_path, history=history)
    rb.path.write_text(rb.path.read_text() + "# changed\n")
    changed = load_runbook(rb.path)
    rec = earlier_run(history, first.run_id)
    with pytest.raises(InputError) as info:
        check_runbook(rec, changed.digest, force=False)
    assert info.value.exit_code == 2 and "changed since" in info.value.message and "--force" in info.value.hint
    assert info.value.field == "--retry-failed" and info.value.file == str(changed.path.resolve())
    check_runbook(rec, changed.digest, force=True)


@pytest.mark.parametrize("status, words", [("succeeded", "nothing to retry"), ("running", "still running")])
def test_retry_failed_needs_a_finished_unsuccessful_run(tmp_path, status, words):
    history = History(tmp_path / "home")
    history.start_run("r1", "rb", runbook_path="/rb.yaml", inventory="", variables={})
    if status != "running":
        history.finish_run("r1", status, 0, None)
    with pytest.raises(InputError, match=words):
        earlier_run(history, "r1")
    with pytest.raises(InputError, match="no run 'nope' in the history"):
        earlier_run(history, "nope")


def test_retry_failed_reapplies_the_earlier_vars_and_worker(tmp_path, inv, monkeypatch):
    rb = runbook(tmp_path, {"name": "deploy"}, variables={"VERSION": "1.0", "OTHER": "o"})
    history = History(tmp_path / "home")
    Script(monkeypatch, {("deploy", "w2"): [FAILED]})
    first, _, _ = run(rb, inv, tmp_path, history=history, only_worker="w2", extra_vars={"VERSION": "1.2"})
    script = Script(monkeypatch)
    carry = load_carry(history, earlier_run(history, first.run_id), rb)
    assert (carry.variables, carry.worker) == ({"VERSION": "1.2"}, "w2")
    run(rb, inv, tmp_path, history=history, carry=carry, extra_vars={"OTHER": "x"})
    assert script.calls == [("deploy", "w2")]
    assert script.seen[("deploy", "w2")]["VERSION"] == "1.2" and script.seen[("deploy", "w2")]["OTHER"] == "x"


# -- --dry-run ------------------------------------------------------------------------------------------


def test_a_plan_contacts_nothing(tmp_path, inv, monkeypatch):
    contacts = []

    def no(*a, **k):
        contacts.append(a)
        raise AssertionError("the plan must not contact a worker")

    monkeypatch.setattr(dispatch_mod, "run_step", no)
    monkeypatch.setattr(sessions_mod, "WorkerSession", no)
    rb = runbook(
        tmp_path,
        {"name": "deploy", "target": "each", "rolling": {"batch": "50%", "max_failures": "25%", "pause": 5}, "retries": {"attempts": 3, "delay": 2}},
        {"name": "rollback", "if": "failure", "container": {"image": "img:1", "pull": "always"}},
    )
    p = Runner(rb, inv, history=History(tmp_path / "home")).plan()
    deploy, rollback = p["steps"]
    assert deploy["rolling"] == {"batches": [["w1", "w3"], ["w2", "w4"]], "order": "inventory", "max_failures": 1, "max_failures_as_written": "25%", "pause": 5.0}
    assert deploy["retries"] == {"attempts": 3, "on": "infrastructure", "delay": 2.0, "backoff": 2.0, "waits": [2.0, 4.0]}
    assert (rollback["if"], rollback["pull"], rollback["rolling"], rollback["workers"]) == ("failure", "always", None, WORKERS)
    assert History(tmp_path / "home").runs() == []  # a plan is not a run
    assert contacts == []


# -- the runbook's new keys, refused with file:line:field ------------------------------------------------


@pytest.mark.parametrize(
    "extra, target, field, words",
    [
        ("rolling: {batch: 0}", "each", "steps[s].rolling.batch", "not 0"),
        ("rolling: {batch: '0%'}", "each", "steps[s].rolling.batch", "not '0%'"),
        ("rolling: {batch: '150%'}", "each", "steps[s].rolling.batch", "not '150%'"),
        ("rolling: {max_failures: '-1'}", "each", "steps[s].rolling.max_failures", "a whole number of workers (at least 0)"),
        ("rolling: {order: alphabetical}", "each", "steps[s].rolling.order", "'alphabetical': use one of inventory, random"),
        ("rolling: {pause: -1}", "each", "steps[s].rolling.pause", "pause must be between 0s and 7d, not -1s"),
        ("rolling: {batch: 2}", "any", "steps[s].rolling", "rolling: needs target: each"),
        ("if: sometimes", "each", "steps[s].if", "'sometimes': use one of success, failure, always"),
        ("retries: {attempts: 0}", "any", "steps[s].retries.attempts", "greater than or equal to 1"),
        ("retries: {delay: 1}", "any", "steps[s].retries.attempts", "required"),
        ("retries: {attempts: 2, on: scripts}", "any", "steps[s].retries.on", "'scripts': use one of infrastructure, any"),
        ("retries: {attempts: 2, backoff: 0.5}", "any", "steps[s].retries.backoff", "greater than or equal to 1"),
    ],
)
def test_bad_release_keys(tmp_path, extra, target, field, words):
    p = tmp_path / "rb.yaml"
    p.write_text(textwrap.dedent(f"""\
        name: x
        steps:
          - name: s
            pool: p
            target: {target}
            container: {{image: i}}
            script: {{syntax: sh, inline: x}}
            {extra}
    """))
    with pytest.raises(InputError) as info:
        load_runbook(p)
    err = info.value
    assert (err.file, err.line, err.field, err.exit_code) == (str(p), 8, field, 2)
    assert words in err.message


def test_retries_on_is_a_word_not_a_yaml_boolean(tmp_path):
    rb = runbook(tmp_path, {"name": "s", "retries": {"attempts": 2}})
    text = rb.path.read_text().replace("attempts: 2", "attempts: 2\n    on: any")
    rb.path.write_text(text)
    assert load_runbook(rb.path).steps[0].retries.on == "any"
