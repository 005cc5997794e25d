"""How a run records what a step raised, without a lab (run_step replaced)."""

from __future__ import annotations

import textwrap

import pytest

import sshexec.run.dispatch as dispatch_mod
from sshexec.config.inventory import load_inventory
from sshexec.config.runbook import load_runbook
from sshexec.run.runner import Runner
from sshexec.ssh import CancelledRemote


@pytest.fixture
def files(tmp_path):
    inv = tmp_path / "inv.yaml"
    inv.write_text("workers:\n  - {name: w1, host: 127.0.0.1, port: 1, pools: [p]}\n")
    rb = tmp_path / "rb.yaml"
    rb.write_text(textwrap.dedent("""
        name: r
        steps:
          - {name: s, pool: p, container: {image: busybox:1}, script: {syntax: sh, inline: "true"}}
    """))
    return load_runbook(rb), load_inventory(inv)


def test_a_cancelled_transfer_is_a_cancelled_step_not_an_unexpected_error(files, monkeypatch):
    """A pull or upload cut short by Ctrl-C raises CancelledRemote inside the step."""

    def cancelled(session, step, ctx):
        raise CancelledRemote()

    monkeypatch.setattr(dispatch_mod, "run_step", cancelled)
    result = Runner(*files).run()
    (step,) = result.steps
    assert (result.status, result.exit_code) == ("cancelled", 130)
    assert step.status == "cancelled" and "unexpected" not in (step.message or "")


def test_a_workers_error_names_the_worker_once(files, monkeypatch):
    """It read `s on w1: w1: image … not found`."""
    from sshexec.errors import PullError

    def missing(session, step, ctx):
        raise PullError("w1", "image busybox:1 not found in its registry")

    monkeypatch.setattr(dispatch_mod, "run_step", missing)
    result = Runner(*files).run()
    (step,) = result.steps
    assert step.message == "image busybox:1 not found in its registry"
    assert result.message == "s on w1: image busybox:1 not found in its registry"
