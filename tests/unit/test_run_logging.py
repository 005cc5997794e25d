"""While a run runs, every record of the "sshexec" logger passes the run's masker (issue 12)."""

from __future__ import annotations

import logging
import textwrap

import pytest

import sshexec.run.dispatch as dispatch_mod
import sshexec.worker.pull as pull_mod
from sshexec.config.inventory import load_inventory
from sshexec.config.runbook import load_runbook
from sshexec.core.status import SUCCEEDED
from sshexec.run.runner import Runner
from sshexec.step.result import StepResult
from sshexec.store.history import History

SECRET = "s3cr3t-in-a-registry-answer"
INSPECT = b'image\timg:1\tnull\t["sh"]\t""\tlinux\tamd64\tsha256:abc\n'


class Records(logging.Handler):
    """Like the CLI's handler: what would reach the terminal."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(self.format(record))


@pytest.fixture
def records():
    h = Records()
    log = logging.getLogger("sshexec")
    log.addHandler(h)
    old = log.level
    log.setLevel(logging.DEBUG)
    yield h
    log.removeHandler(h)
    log.setLevel(old)


@pytest.fixture
def runner(tmp_path, monkeypatch):
    inv = tmp_path / "inv.yaml"
    inv.write_text("workers:\n  - {name: w1, host: 127.0.0.1, port: 1, pools: [linux]}\n")
    rb = tmp_path / "rb.yaml"
    rb.write_text(textwrap.dedent("""
        name: masked
        sensitive_variables: {TOKEN: {env: THE_TOKEN}}
        steps:
          - {name: s, pool: linux, container: {image: img:1}, script: {syntax: sh, inline: "true"}}
    """))
    monkeypatch.setenv("THE_TOKEN", SECRET)
    return Runner(load_runbook(rb), load_inventory(inv), history=History(tmp_path / "home"))


class FakeConn:
    """A registry that answers 503 once, quoting the secret, then serves the image."""

    def __init__(self, worker):
        self.worker = worker
        self.replies = [(91, b"", f"received unexpected HTTP status: 503 Service Unavailable ({SECRET})".encode()), (0, INSPECT, b"")]

    def stream(self, command, *, stdin, on_stdout, on_stderr, **kw):
        code, out, err = self.replies.pop(0)
        on_stdout(out)
        on_stderr(err)
        return code


def test_a_pull_retry_warning_quoting_a_secret_is_masked(runner, records, monkeypatch):
    def fake_step(session, step, ctx):
        # The real pull path: its retry warning quotes the registry's answer.
        pull_mod.pull_image(FakeConn(session.worker), step.image, None, None, cfg_dir="c", sleep=lambda s: None)
        logging.getLogger("sshexec").warning("with args: %s and exc", SECRET, exc_info=RuntimeError(f"boom {SECRET}"))
        return StepResult(step.name, session.worker.name, SUCCEEDED, 0, 0.0)

    monkeypatch.setattr(dispatch_mod, "run_step", fake_step)
    result = runner.run()
    assert result.status == SUCCEEDED
    text = "\n".join(records.lines)
    assert "pull of img:1 failed" in text and "with args: ********" in text and "boom ********" in text
    assert SECRET not in text


def test_the_filter_lives_only_as_long_as_the_run(runner, records, monkeypatch):
    log = logging.getLogger("sshexec")
    before = list(log.filters)
    seen = []

    def fake_step(session, step, ctx):
        seen.append(list(log.filters))
        return StepResult(step.name, session.worker.name, SUCCEEDED, 0, 0.0)

    monkeypatch.setattr(dispatch_mod, "run_step", fake_step)
    runner.run()
    assert len(seen[0]) == len(before) + 1
    assert log.filters == before


def test_a_skipped_worker_s_reason_is_masked_in_events_and_history(tmp_path, monkeypatch):
    from sshexec.errors import DockerPermission

    inv = tmp_path / "inv2.yaml"
    inv.write_text("workers:\n  - {name: w1, host: 127.0.0.1, port: 1, pools: [linux]}\n  - {name: w2, host: 127.0.0.1, port: 2, pools: [linux]}\n")
    rb = tmp_path / "rb2.yaml"
    rb.write_text("name: m\nsensitive_variables: {TOKEN: {env: THE_TOKEN}}\nsteps:\n  - {name: s, pool: linux, container: {image: img:1}, script: {syntax: sh, inline: 'true'}}\n")
    monkeypatch.setenv("THE_TOKEN", SECRET)
    events = []

    def fake_step(session, step, ctx):
        if session.worker.name == "w1":
            raise DockerPermission("w1", f"user may not use the Docker daemon ({SECRET})")
        return StepResult(step.name, session.worker.name, SUCCEEDED, 0, 0.0)

    monkeypatch.setattr(dispatch_mod, "run_step", fake_step)
    history = History(tmp_path / "home2")
    result = Runner(load_runbook(rb), load_inventory(inv), history=history, any_order="inventory", on_event=lambda k, w, d: events.append((k, w, d))).run()
    assert result.status == SUCCEEDED
    (skip,) = [d for k, w, d in events if k == "skip"]
    assert SECRET not in skip.message and "********" in skip.message
    assert SECRET not in repr(history.steps(result.run_id))
