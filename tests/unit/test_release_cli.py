"""`sshexec run --dry-run` and `--retry-failed` at the command line, without a lab."""

from __future__ import annotations

import json

import pytest
import yaml
from labkit import PortRecorder, sshexec


@pytest.fixture
def listener(monkeypatch):
    monkeypatch.setenv("SSHEXEC_CONNECT_RETRIES", "1")  # a real run against it fails at the first refusal
    lst = PortRecorder(banner=b"SSH-1.5-release-test\r\n")  # refused at once
    yield lst
    lst.close()


@pytest.fixture
def files(tmp_path, listener):
    inv = tmp_path / "inv.yaml"
    workers = [{"name": f"w{i}", "host": "127.0.0.1", "port": listener.port, "pools": ["linux"], "connect_timeout": 2} for i in range(1, 5)]
    feeds = [{"name": "lab", "registry": "127.0.0.1:5999", "username": "ci", "password_env": "RELEASE_TEST_PW"}]
    inv.write_text(yaml.safe_dump({"workers": workers, "feeds": feeds}))
    rb = tmp_path / "rb.yaml"
    step = {"pool": "linux", "container": {"image": "127.0.0.1:5999/app:1", "feed": "lab", "pull": "always"}, "script": {"syntax": "sh", "inline": "true"}}
    rb.write_text(yaml.safe_dump({"name": "release", "steps": [
        {**step, "name": "deploy", "target": "each", "rolling": {"batch": 2, "max_failures": "25%", "pause": 10}, "retries": {"attempts": 2, "delay": 3}},
        {**step, "name": "rollback", "if": "failure"},
    ]}, sort_keys=False))  # fmt: skip
    return rb, inv


def simple(rb):
    """A one-step runbook beside `rb`: a real run of it against the listener fails fast."""
    p = rb.with_name("simple.yaml")
    p.write_text("name: simple\nsteps:\n  - {name: s, pool: linux, container: {image: busybox}, script: {syntax: sh, inline: 'true'}}\n")
    return p


def test_dry_run_prints_the_plan_and_connects_to_nothing(files, listener, monkeypatch):
    rb, inv = files
    monkeypatch.setenv("RELEASE_TEST_PW", "release-test-pw")
    res = sshexec("run", rb, "--inventory", inv, "--dry-run")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "nothing was contacted" in out
    assert "batch 1: w1, w2" in out and "batch 2: w3, w4" in out
    assert "max_failures 1 (25% of 4, rounded down) · pause 10s between batches" in out
    assert "if: failure" in out and "pull always · feed lab (127.0.0.1:5999)" in out
    assert "retries: 2 attempts in all, on infrastructure; waits at most 3s" in out
    data = json.loads(sshexec("run", rb, "--inventory", inv, "--dry-run", "--json").stdout)
    assert [s["step"] for s in data["steps"]] == ["deploy", "rollback"]
    assert data["steps"][0]["rolling"]["batches"] == [["w1", "w2"], ["w3", "w4"]]
    assert listener.accepted == []
    assert json.loads(sshexec("runs", "--json").stdout) == []  # a plan leaves no run behind
    # The same inventory, really run: the listener sees the connections a dry run did not make.
    real = sshexec("run", simple(rb), "--inventory", inv, "--quiet", "--worker", "w1")
    assert real.returncode == 3
    assert len(listener.accepted) >= 1


def test_dry_run_checks_the_input_like_a_run(files, monkeypatch):
    rb, inv = files
    monkeypatch.delenv("RELEASE_TEST_PW", raising=False)
    res = sshexec("run", rb, "--inventory", inv, "--dry-run")
    assert res.returncode == 2 and "RELEASE_TEST_PW, which is not set" in res.stderr
    monkeypatch.setenv("RELEASE_TEST_PW", "release-test-pw")
    res = sshexec("run", rb, "--inventory", inv, "--dry-run", "--worker", "nope")
    assert res.returncode == 2 and "nope" in res.stderr


def test_retry_failed_with_an_unknown_run_id_exits_2(files):
    rb, inv = files
    res = sshexec("run", "--retry-failed", "20990101-000000-abcdef", "--inventory", inv)
    assert res.returncode == 2
    assert "--retry-failed: no run '20990101-000000-abcdef' in the history" in res.stderr


def test_retry_failed_takes_a_run_id_not_a_runbook(files):
    rb, inv = files
    res = sshexec("run", "--retry-failed", rb, "--inventory", inv)
    assert res.returncode == 2 and "--retry-failed takes a run id, not a runbook file" in res.stderr
    # --retry-failed is an option taking RUN_ID: the old `run RUNBOOK --retry-failed` has no RUN_ID
    res = sshexec("run", rb, "--retry-failed", "--inventory", inv)
    assert res.returncode == 2 and "run --retry-failed needs RUN_ID" in res.stderr
    # a runbook beside a RUN_ID is refused: the retry reads the one that run read
    res = sshexec("run", rb, "--retry-failed", "20990101-000000-abcdef", "--inventory", inv)
    assert res.returncode == 2 and f"reads the runbook that run read: leave out {rb}" in res.stderr


def test_force_without_retry_failed_exits_2(files):
    rb, inv = files
    res = sshexec("run", rb, "--inventory", inv, "--force")
    assert res.returncode == 2 and "--force goes with --retry-failed" in res.stderr


def test_retry_failed_of_a_changed_runbook_exits_2_and_dry_run_shows_what_would_run(files, listener):
    rb, inv = files
    rb = simple(rb)
    first = sshexec("run", rb, "--inventory", inv, "--json", "--worker", "w1")
    assert first.returncode == 3
    run_id = json.loads(first.stdout)["run_id"]
    contacted = len(listener.accepted)
    plan = json.loads(sshexec("run", "--retry-failed", run_id, "--inventory", inv, "--dry-run", "--json").stdout)
    assert plan["retry_of"] == run_id
    assert plan["steps"][0]["workers"] == ["w1"]  # nothing succeeded: it runs again, on the earlier run's --worker
    assert len(listener.accepted) == contacted
    rb.write_text(rb.read_text().replace("inline: 'true'", "inline: 'true; true'"))
    res = sshexec("run", "--retry-failed", run_id, "--inventory", inv, "--dry-run")
    assert res.returncode == 2
    assert f"{rb} --retry-failed: run {run_id} read {rb}, which has changed since" in res.stderr
    assert "--force" in res.stderr
    assert sshexec("run", "--retry-failed", run_id, "--inventory", inv, "--dry-run", "--force").returncode == 0
    assert len(listener.accepted) == contacted


def test_dry_run_shows_the_variables_secrets_masked_and_a_retry_reuses_the_earlier_vars(files, listener, monkeypatch):
    rb, inv = files
    rb = rb.with_name("vars.yaml")
    rb.write_text(
        "name: vars\nvariables: {GREETING: hello, TARGET: prod}\nsensitive_variables: {TOKEN: {env: VARS_TEST_TOKEN}}\n"
        "steps:\n  - {name: s, pool: linux, container: {image: busybox}, script: {syntax: sh, inline: 'true'}}\n"
    )
    monkeypatch.setenv("VARS_TEST_TOKEN", "t0ken-very-secret")
    plan = sshexec("run", rb, "--inventory", inv, "--dry-run", "--var", "TARGET=t0ken-very-secret-ish")
    assert plan.returncode == 0, plan.stderr
    lines = [" ".join(line.split()) for line in plan.stdout.splitlines()]
    assert "GREETING = hello" in lines and "TARGET = ********-ish (--var)" in lines and "TOKEN = ******** ($VARS_TEST_TOKEN)" in lines
    assert "t0ken-very-secret" not in plan.stdout
    first = sshexec("run", rb, "--inventory", inv, "--json", "--worker", "w1", "--var", "TARGET=staging")
    run_id = json.loads(first.stdout)["run_id"]
    retry = json.loads(sshexec("run", "--retry-failed", run_id, "--inventory", inv, "--dry-run", "--json").stdout)
    assert {"name": "TARGET", "value": "staging", "from": f"--var of run {run_id}", "sensitive": False} in retry["variables"]
    again = json.loads(sshexec("run", "--retry-failed", run_id, "--inventory", inv, "--dry-run", "--json", "--var", "TARGET=canary").stdout)
    assert {"name": "TARGET", "value": "canary", "from": "--var", "sensitive": False} in again["variables"]  # given again, it wins


def test_the_view_draws_a_bar_per_batch_and_takes_back_a_worker_that_tries_again():
    from sshexec.cli.runs import RunView
    from sshexec.run.attempts import Attempt
    from sshexec.step.result import StepResult

    class Live:
        def __init__(self):
            self.calls = []

        def update(self, key, description, *, completed=None, total=None):
            self.calls.append((key, completed, total))

        def done(self, key):
            self.calls.append((key, "done"))

        def close(self):
            pass

    view = RunView()
    view.live = live = Live()
    view.event("batch", "", ("deploy", 1, 2, ["w1", "w3"]))
    view.event("step-done", "w1", StepResult("deploy", "w1", "succeeded", 0, 0.0))
    view.event("step-done", "w3", StepResult("deploy", "w3", "error", None, 0.0, "lost"))
    view.event("attempt", "w3", Attempt("deploy", "w3", 1, 2, 0.5, "error", "lost"))  # w3 is not done after all
    view.event("step-done", "w3", StepResult("deploy", "w3", "succeeded", 0, 0.0))
    view.event("batch", "", ("deploy", 2, 2, ["w2"]))
    view.event("step-done", "w2", StepResult("deploy", "w2", "succeeded", 0, 0.0))
    first, second = ("batch", "deploy", 1), ("batch", "deploy", 2)
    assert [c for c in live.calls if c[0] == first] == [(first, 0, 2), (first, 1, 2), (first, "done"), (first, 1, 2), (first, "done")]
    assert [c for c in live.calls if c[0] == second] == [(second, 0, 1), (second, "done")]
