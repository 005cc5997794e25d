"""Issue 21's pieces without a daemon: --since, notification endpoints and their signature, image digests, approval steps."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from sshexec.errors import InputError
from sshexec.ops.notify import signature
from sshexec.store.audit import parse_since
from sshexec.store.notify import check_endpoint, event_of
from sshexec.worker.docker import ImageInfo, repository_of


def test_since_takes_a_duration_back_or_a_utc_date():
    assert parse_since("1h", now=10_000.0) == 6_400.0
    assert parse_since("2026-12-03") == 1796256000.0
    assert parse_since("2026-12-03T08:00") == 1796256000.0 + 8 * 3600
    assert parse_since(None) is None
    with pytest.raises(InputError, match="--since 'yesterday'"):
        parse_since("yesterday")


@pytest.mark.parametrize(
    ("url", "events", "secret", "says"),
    [
        ("ftp://h/x", "run.failed", "s" * 8, "http:// or https://"),
        ("https://u:p@h/x", "run.failed", "s" * 8, "holds credentials"),
        ("https://h/x", "run.finished", "s" * 8, "not run.finished"),
        ("https://h/x", "", "s" * 8, "events must be"),
        ("https://h/x", "run.failed", "short", "at least 8"),
    ],
)
def test_a_bad_endpoint_says_what_is_wrong(url, events, secret, says):
    with pytest.raises(InputError, match=says):
        check_endpoint("hook", url, events, secret)


def test_an_endpoint_never_shows_its_secret():
    ep = check_endpoint("hook", "https://h/x", "run.failed, run.waiting,run.failed", "s3cret-value")
    assert ep.events == ("run.failed", "run.waiting")
    assert "s3cret-value" not in repr(ep) and "s3cret-value" not in str(ep.to_dict())


def test_the_signature_is_the_hmac_of_the_exact_body():
    body = b'{"event": "run.failed"}'
    assert signature("k" * 8, body) == "sha256=" + hmac.new(b"k" * 8, body, hashlib.sha256).hexdigest()
    assert signature("k" * 8, body + b" ") != signature("k" * 8, body)


def test_events_of_run_ends():
    assert [event_of(s) for s in ("succeeded", "failed", "timed-out", "error", "cancelled", "waiting", "running")] == [
        "run.succeeded", "run.failed", "run.failed", "run.failed", "run.cancelled", "run.waiting", None]  # fmt: skip


def test_the_digest_that_ran_is_the_repository_s_own():
    fields = ["null", '["sh"]', '""', "linux", "amd64", '["other.example/x@sha256:1", "127.0.0.1:5000/app/web@sha256:2"]', "sha256:id"]
    info = ImageInfo.parse("127.0.0.1:5000/app/web:7", fields)
    assert info.id == "sha256:id" and info.digest_ref() == "127.0.0.1:5000/app/web@sha256:2"
    old = ImageInfo.parse("127.0.0.1:5000/app/web:7", fields[:5] + ["sha256:id"])  # an older GO's line: no RepoDigests
    assert old.id == "sha256:id" and old.digest_ref() is None
    assert repository_of("127.0.0.1:5000/app/web:7@sha256:2") == "127.0.0.1:5000/app/web"
    assert repository_of("localhost:5000/web") == "localhost:5000/web"


def test_an_approval_step_needs_no_pool_and_takes_none(tmp_path):
    from sshexec.config.runbook import load_runbook

    ok = tmp_path / "ok.yaml"
    ok.write_text("name: g\nsteps:\n  - name: gate\n    approval: {message: \"go?\", role: admin, timeout: 5m}\n")
    (step,) = load_runbook(ok).steps
    assert (step.approval.role, step.approval.timeout, step.timeout) == ("admin", 300.0, 300)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: g\nsteps:\n  - name: gate\n    approval: {message: \"go?\", role: viewer}\n")
    with pytest.raises(InputError, match="role"):
        load_runbook(bad)
