"""The server without workers: binding rules, the brake on failed logins, the API's description, headers."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from sshexec.cli import program
from sshexec.errors import InputError
from sshexec.server.app import create_app, is_loopback, parse_bind
from sshexec.server.auth import FailedLogins
from sshexec.server.runs import Settings
from sshexec.store.tokens import TokenStore


@pytest.mark.parametrize(("bind", "want"), [("127.0.0.1:8080", ("127.0.0.1", 8080)), ("[::1]:9000", ("::1", 9000)), ("0.0.0.0:0", ("0.0.0.0", 0)), ("localhost:1", ("localhost", 1))])
def test_parse_bind(bind, want):
    assert parse_bind(bind) == want


@pytest.mark.parametrize("bind", ["8080", "127.0.0.1", ":80", "127.0.0.1:http", "127.0.0.1:70000", "127.0.0.1:-1"])
def test_bad_binds_are_input_errors(bind):
    with pytest.raises(InputError, match="HOST:PORT"):
        parse_bind(bind)


def test_loopback():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.9.9.9", "::1", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.1", "example.com", "192.168.1.1"))


@pytest.fixture
def served(monkeypatch, tmp_path):
    """`sshexec serve` in this process, with uvicorn replaced by a recorder."""
    calls = []
    monkeypatch.setattr("sshexec.server.app.serve", lambda app, host, port, **kw: calls.append((host, port, {**kw, "app": app})))
    inv = tmp_path / "inv.yaml"
    inv.write_text("workers:\n  - name: w1\n    host: 127.0.0.1\n    pools: [linux]\n")
    (tmp_path / "rb").mkdir()
    return calls, ["serve", "--inventory", str(inv), "--runbooks", str(tmp_path / "rb")]


def test_a_non_loopback_bind_needs_tls_or_insecure_bind(served, capsys):
    calls, args = served
    assert program.run(["sshexec", *args, "--bind", "0.0.0.0:8080"], exit=False) == 2
    err = capsys.readouterr().err
    assert "listens beyond this machine" in err and "--tls-cert" in err and "--insecure-bind" in err
    assert calls == []
    assert program.run(["sshexec", *args, "--bind", "0.0.0.0:8080", "--insecure-bind"], exit=False) == 0
    assert "warning:" in capsys.readouterr().err and calls[-1][:2] == ("0.0.0.0", 8080)
    assert program.run(["sshexec", *args], exit=False) == 0 and calls[-1][:2] == ("127.0.0.1", 8080)
    assert program.run(["sshexec", *args, "--bind", "0.0.0.0:1", "--tls-cert", "nope.pem"], exit=False) == 2
    assert "go together" in capsys.readouterr().err


def test_max_body_is_a_size(served, capsys):
    calls, args = served
    assert program.run(["sshexec", *args], exit=False) == 0 and calls[-1][2]["app"].state.runs.settings.max_body == 1 << 20
    assert program.run(["sshexec", *args, "--max-body", "256K"], exit=False) == 0
    assert calls[-1][2]["app"].state.runs.settings.max_body == 256 << 10
    for bad in ("lots", "0"):
        assert program.run(["sshexec", *args, "--max-body", bad], exit=False) == 2
        assert "--max-body" in capsys.readouterr().err
    assert calls[-1][2]["app"].state.runs.settings.stream_recheck == 30
    for bad in ("0", "soon", "7200"):
        assert program.run(["sshexec", *args, "--stream-recheck", bad], exit=False) == 2
        assert "--stream-recheck" in capsys.readouterr().err
    assert program.run(["sshexec", *args, "--forwarded-allow-ips", "10.0.0.0/8,proxy.example"], exit=False) == 2
    assert "'proxy.example' is not an IP address" in capsys.readouterr().err


def test_bodies_past_max_body_are_refused(tmp_path):
    (tmp_path / "rb").mkdir()
    app = create_app(Settings(runbooks=tmp_path / "rb", max_body=1000), db=tmp_path)
    bearer = {"Authorization": f"Bearer {TokenStore(tmp_path).create('op', 'operator')}"}
    with TestClient(app) as c:
        big = b'{"runbook": "nope", "vars": {"A": "' + b"x" * 2000 + b'"}}'
        assert c.post("/api/runs", content=big, headers={**bearer, "Content-Type": "application/json"}).status_code == 413
        assert c.post("/api/runs", json={"runbook": "nope"}, headers=bearer).status_code == 404  # under the cap: read
        assert c.post("/login", data={"token": "x" * 2000, "csrf": "y"}).status_code == 413  # forms too
        assert c.post("/api/runs", content=big, headers={"Content-Type": "application/json"}).status_code == 401  # a stranger: 401 first


def test_failed_logins_brake_per_address_and_wear_off():
    now = [1000.0]
    brake = FailedLogins(limit=3, window=60, clock=lambda: now[0])
    for _ in range(3):
        assert brake.retry_after("a") == 0
        brake.failed("a")
    assert brake.retry_after("a") == 61 and brake.retry_after("b") == 0
    now[0] += 30
    assert 0 < brake.retry_after("a") <= 31
    now[0] += 31
    assert brake.retry_after("a") == 0


def test_the_brakes_memory_is_bounded():
    now = [0.0]
    brake = FailedLogins(limit=3, window=60, clock=lambda: now[0], size=100)
    for i in range(5000):
        brake.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(brake) == 100  # the least recently failed were forgotten
    for _ in range(3):
        brake.failed("a")
    assert brake.retry_after("a") > 0 and len(brake) == 100
    now[0] += 61
    assert len(brake) == 0 and brake.retry_after("a") == 0  # and nothing outlives its window


def test_a_braked_address_still_logs_in_with_a_valid_token(tmp_path):
    from fastapi import HTTPException

    from sshexec.server.auth import Auth
    from sshexec.store.sessions import SessionStore

    store = TokenStore(tmp_path)
    good = store.create("op", "operator")
    auth = Auth(store, SessionStore(store.db))
    codes = []
    for _ in range(7):
        with pytest.raises(HTTPException) as info:
            auth.check_token("sx_bad", "10.0.0.1")
        codes.append(info.value.status_code)
    assert codes == [401] * 5 + [429] * 2
    assert auth.check_token(good, "10.0.0.1").name == "op"


@pytest.fixture
def client(tmp_path):
    (tmp_path / "rb").mkdir()
    app = create_app(Settings(runbooks=tmp_path / "rb"), db=tmp_path)
    with TestClient(app) as c:
        yield c, TokenStore(tmp_path)


def test_the_api_is_described_at_docs_with_local_assets_to_logged_in_callers(client):
    c, store = client
    assert c.get("/openapi.json").status_code == 401  # no token: no description of the API
    r = c.get("/docs", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login?next=/docs"
    bearer = {"Authorization": f"Bearer {store.create('v', 'viewer')}"}
    paths = c.get("/openapi.json", headers=bearer).json()["paths"]
    assert {"/api/runs", "/api/runs/{run_id}", "/api/runs/{run_id}/log", "/api/runs/{run_id}/artifacts/{worker}/{name}",
            "/api/runs/{run_id}/cancel", "/api/workers", "/api/runbooks"} <= set(paths)  # fmt: skip
    assert "/openapi.json" not in paths and "/docs" not in paths
    assert "202" in paths["/api/runs"]["post"]["responses"]
    docs = c.get("/docs", headers=bearer).text
    assert "/docs-assets/swagger-ui-bundle.js" in docs and "cdn" not in docs
    assert c.get("/docs-assets/swagger-ui-bundle.js").status_code == 200


def test_pages_send_protective_headers_and_need_a_login(client):
    c, store = client
    r = c.get("/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login?next=/"
    page = c.get("/login")
    assert "script-src 'self'" in page.headers["content-security-policy"] and page.headers["x-frame-options"] == "DENY"
    assert "<script>" not in page.text  # no inline script anywhere
    assert c.get("/api/runs/x/log").status_code == 401
    token = store.create("v", "viewer")
    assert c.get("/api/runs/nope", headers={"Authorization": f"Bearer {token}"}).status_code == 404
    assert c.get("/api/runs", headers={"Authorization": f"Basic {token}"}).status_code == 401


@pytest.mark.parametrize("next_", ["//evil.example/", "https://evil.example/", "/\\evil.example"])
def test_login_never_redirects_off_the_server(client, next_):
    c, store = client
    token = store.create("v", "viewer")
    page = c.get("/login")
    csrf = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    r = c.post("/login", data={"token": token, "csrf": csrf, "next": next_}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"


def test_check_finds_the_model_that_check_json_and_the_api_print():
    """One model per view: check_worker's result is the WorkerHealth that `check --json` and /api/workers dump."""
    import typing

    from sshexec.errors import DiskFull
    from sshexec.ops.check import _replace, check_worker
    from sshexec.views import WorkerHealth, WorkerSlots

    assert typing.get_type_hints(check_worker)["return"] is WorkerHealth
    h = WorkerHealth(worker="w1", address="deploy@127.0.0.1:22", ssh=True, node="w1", slots=WorkerSlots(used=1, max=4), endpoint="unix:///x", docker_free_bytes=5)
    dumped = h.model_dump()
    assert dumped["slots"] == {"used": 1, "max": 4} and dumped["node"] == "w1" and dumped["endpoint"] == "unix:///x" and dumped["healthy"] is True
    sick = _replace(h, error=DiskFull("w1", "disk full", hint="free space"), warnings=("low",))
    assert sick.healthy is False and sick.model_dump()["error"] == {"error": "DiskFull", "message": "w1: disk full", "hint": "free space", "worker": "w1"}
    assert h.healthy, "the first model is unchanged (frozen: only copies change)"




def test_an_unknown_status_filter_is_bad_input_naming_the_valid_ones(client):
    from sshexec.core.status import RUN_STATUSES

    c, store = client
    auth = {"Authorization": f"Bearer {store.create('v', 'viewer')}"}
    r = c.get("/api/runs?status=bogus", headers=auth)
    assert r.status_code == 422
    assert "unknown run status 'bogus'" in r.text and all(s in r.text for s in RUN_STATUSES)
    assert c.get("/api/runs?status=failed", headers=auth).status_code == 200
