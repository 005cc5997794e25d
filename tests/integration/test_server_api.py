"""`sshexec serve` through its HTTP API: httpx against a real uvicorn on 127.0.0.1 and the real lab."""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from labkit import REPO, step, stored_artifact, stored_log
from serverkit import demo_runbooks, echo_runbook, follow_log, lines_runbook, long_runbook, running_server, wait_for


@pytest.fixture
def home():
    return Path(os.environ["SSHEXEC_HOME"])


@pytest.fixture
def runbooks(tmp_path, lab):
    extra = {"long": long_runbook(lab), "echo": echo_runbook(lab), "lines": lines_runbook(lab), "release": release_runbook(lab),
             "broken": {"name": "broken", "steps": [{**step("s", lab.image_ref("busybox"), "true", syntax="sh"), "script": {"syntax": "sh", "file": "scripts/missing.sh"}}]}}  # fmt: skip
    return demo_runbooks(tmp_path / "runbooks", lab, extra=extra)


def release_runbook(lab) -> dict:
    """A python step with a secret, a plain variable, and a PYTHONPATH the runbook itself means to set."""
    script = "import os, sys; print('releasing', os.environ['RELEASE'], 'runbook lib searched:', '/opt/release-lib' in sys.path)"
    return {"name": "release", "variables": {"RELEASE": "1.0", "PYTHONPATH": "/opt/release-lib"}, "loader_variables": ["PYTHONPATH"],
            "sensitive_variables": {"TOKEN": {"env": "SSHEXEC_DEMO_TOKEN"}},
            "steps": [step("deploy", lab.image_ref("tools"), script, syntax="python", feed="lab")]}  # fmt: skip


@pytest.fixture
def demo_token(monkeypatch):
    token = "srv-secret-" + os.urandom(6).hex()
    monkeypatch.setenv("SSHEXEC_DEMO_TOKEN", token)
    return token


@pytest.fixture
def server(lab_env, runbooks, home, demo_token):
    with running_server(runbooks=runbooks, inventory=lab_env.inventory_path, home=home) as s:
        yield s


def start(server, token, runbook, **vars):
    with server.client(token) as c:
        r = c.post("/api/runs", json={"runbook": runbook, "vars": vars})
    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"/api/runs/{r.json()['run_id']}"
    return r.json()["run_id"]


def test_trigger_the_demo_and_follow_its_events_to_the_end(server, demo_token, home, no_leftovers):
    op = server.token("deployer", "operator")
    run_id = start(server, op, "demo")
    seen_running = []
    with server.client(op) as c:
        text, end = follow_log(server, op, run_id, on_line=lambda _: seen_running.append(c.get(f"/api/runs/{run_id}").json()["status"]))
        detail = c.get(f"/api/runs/{run_id}").json()
        assert end == {"status": "succeeded", "exit_code": 0}
        assert "running" in seen_running  # lines arrived while the run went on
        assert "/build | package out/app-1.4.2.tar.gz" in text
        assert "calling the API with token ********" in text and demo_token not in text
        assert stored_log(run_id, home).decode() == text  # the whole log, nothing lost or added
        assert detail["status"] == "succeeded" and detail["started_by"] == "token:deployer"
        assert {s["step"] for s in detail["steps"]} == {"build", "deploy", "report"}
        assert all(s["status"] == "succeeded" for s in detail["steps"])
        outputs = {k: v for s in detail["steps"] for k, v in s["outputs"].items()}
        assert outputs["Artifact"] == "app-1.4.2.tar.gz" and outputs["Summary"] == "deployed app-1.4.2.tar.gz"
        (art,) = detail["artifacts"]
        r = c.get(art["url"])
        assert r.status_code == 200 and r.content[:2] == b"\x1f\x8b" and len(r.content) == art["size"]
        assert r.headers["content-disposition"].startswith("attachment")
        assert r.content == stored_artifact(run_id, art["worker"], art["name"], home)
        # The same run in the history list, filtered.
        listed = c.get("/api/runs", params={"runbook": "demo", "status": "succeeded"}).json()
        assert [r["id"] for r in listed["runs"]] == [run_id] and listed["total"] == 1
        # The log after the end: the same whole log, then the end event.
    assert follow_log(server, op, run_id) == (text, end)


def test_cancel_a_long_run(server, lab, no_leftovers):
    op = server.token("op", "operator")
    run_id = start(server, op, "long")
    with server.client(op) as c:

        def cancel_once_started(chunk):
            if "started sleeping" in chunk:
                r = c.post(f"/api/runs/{run_id}/cancel")
                assert r.status_code == 202 and r.json() == {"run_id": run_id, "status": "cancelling"}

        text, end = follow_log(server, op, run_id, on_line=cancel_once_started)
        assert "started sleeping" in text and "woke up" not in text
        assert end == {"status": "cancelled", "exit_code": 130}
        rec = c.get(f"/api/runs/{run_id}").json()
        assert rec["status"] == "cancelled" and rec["exit_code"] == 130
        assert c.post(f"/api/runs/{run_id}/cancel").status_code == 409  # it has ended


def test_roles_and_missing_tokens(server):
    viewer, op = server.token("watcher", "viewer"), server.token("op", "operator")
    with server.client() as anon:
        for method, path in (("GET", "/api/runs"), ("GET", "/api/workers"), ("POST", "/api/runs"), ("GET", "/api/runbooks")):
            r = anon.request(method, path, json={"runbook": "demo"} if method == "POST" else None)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (path, r.text)
    with server.client("sx_not-a-token") as bad:
        assert bad.get("/api/runs").status_code == 401
    with server.client() as anon:
        for header in (f"Basic {base64.b64encode(b'op:secret').decode()}", "Token sx_x", "Bearer"):
            r = anon.get("/api/runs", headers={"Authorization": header})
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (header, r.text)
        assert anon.get("/openapi.json").status_code == 401  # the API's description too (docs/security.md says why)
        assert anon.get("/docs", follow_redirects=False).headers["location"] == "/login?next=/docs"
    with server.client(viewer) as v:
        assert "/api/runs" in v.get("/openapi.json").json()["paths"]
    with server.client(viewer) as v:
        assert v.get("/api/runs").status_code == 200 and v.get("/api/runbooks").status_code == 200
        r = v.post("/api/runs", json={"runbook": "echo"})
        assert r.status_code == 403 and "operator" in r.json()["detail"]
        assert v.post("/api/runs/whatever/cancel").status_code == 403
        assert v.get("/api/workers", params={"refresh": "true"}).status_code == 403
        assert v.get("/api/runs").json()["total"] == 0  # the viewer started nothing
    with server.client(op) as o:
        assert o.post("/api/runs", json={"runbook": "nope"}).status_code == 404
        assert o.post("/api/runs", json={"runbook": "../demo"}).status_code == 404
        assert o.post("/api/runs", json={"runbook": str(REPO / "runbooks" / "demo")}).status_code == 404
        r = o.post("/api/runs", json={"runbook": "demo", "vars": {"API_TOKEN": "from-a-request"}})
        assert r.status_code == 422 and "its own environment" in r.json()["detail"]
        assert "from-a-request" not in json.dumps(o.get("/api/runs").json())
    subprocess.run([sys.executable, "-m", "sshexec", "token", "revoke", "op"], env={**os.environ, "SSHEXEC_HOME": str(server.home)}, check=True, timeout=60)
    with server.client(op) as o:
        assert o.get("/api/runs").status_code == 401  # revoked: at once


def test_a_request_sets_only_the_runbooks_declared_variables(server, demo_token, no_leftovers):
    """Issue 19: a request's vars ran its own code in the step (PYTHONPATH + a variable named sitecustomize.py)."""
    op = server.token("op", "operator")
    leaked = base64.b64encode(demo_token.encode()).decode()
    exploit = {"PYTHONPATH": "/run/sshexec/vars.1", "sitecustomize.py": "import os,base64;print(base64.b64encode(os.environ['TOKEN'].encode()))"}
    with server.client(op) as c:
        r = c.post("/api/runs", json={"runbook": "release", "vars": exploit})
        if r.status_code == 202:
            text, _ = follow_log(server, op, r.json()["run_id"])
            assert leaked not in text, f"the request's code ran in the step and printed the secret, base64-encoded: {text}"
        assert r.status_code == 422, r.text
        problems = {p["field"]: p for p in r.json()["error"]["problems"]}
        assert set(problems) == {"vars.PYTHONPATH", "vars.sitecustomize.py"}
        assert "only the runbook sets it" in problems["vars.PYTHONPATH"]["message"]  # declared, but a loader name
        assert "not a variable of runbook 'release'" in problems["vars.sitecustomize.py"]["message"]
        # A later step's output cannot be set in advance; a typo names the nearest variable.
        r = c.post("/api/runs", json={"runbook": "release", "vars": {"deploy.version": "9.9"}})
        assert r.status_code == 422 and r.json()["error"]["field"] == "vars.deploy.version"
        r = c.post("/api/runs", json={"runbook": "release", "vars": {"RELEASD": "2.0"}})
        assert r.status_code == 422 and r.json()["error"]["hint"].startswith("did you mean RELEASE?")
        assert c.get("/api/runs").json()["total"] == 0  # nothing started
        # A declared plain variable is what a request may set; the runbook's own PYTHONPATH is used.
        run_id = start(server, op, "release", RELEASE="2.0")
        text, end = follow_log(server, op, run_id)
        assert end["status"] == "succeeded" and "releasing 2.0 runbook lib searched: True" in text, text


def memory_kib(pid: int) -> dict[str, int]:
    """The process's resident memory now (VmRSS) and at its peak so far (VmHWM), in KiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {k: int(fields[k].split()[0]) for k in ("VmRSS", "VmHWM")}


def post_big(server, path: str, size: int, headers: dict[str, str] | None = None) -> tuple[int, bytes, int]:
    """POST `size` bytes over a plain socket while reading the answer: (status, answer, bytes sent when it came)."""
    u = urlsplit(server.url)
    sock = socket.create_connection((u.hostname, u.port), timeout=60)
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {u.netloc}\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n{extra}\r\n".encode())
    sent = [0]

    def send_body() -> None:
        chunk = b"[" + b"1," * (1 << 19)  # 1 MiB of a JSON array that never ends
        try:
            while sent[0] < size:
                piece = chunk[: size - sent[0]]
                sock.sendall(piece)
                sent[0] += len(piece)
        except OSError:
            pass  # the server closed the connection: it took no more

    sender = threading.Thread(target=send_body, daemon=True)
    sender.start()
    answer = b""
    try:
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536) or b"\r\n\r\n"
        at_answer = sent[0]
        head, _, body = answer.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: *(\d+)", head)[1])
        while len(body) < length:
            body += sock.recv(65536) or b" " * length
        answer = head + b"\r\n\r\n" + body
        sender.join(120)
        # Pipelined behind the body: its answer means the server is done with the big one.
        if not sender.is_alive():
            try:
                sock.sendall(f"GET /api/me HTTP/1.1\r\nHost: {u.netloc}\r\nConnection: close\r\n\r\n".encode())
                while sock.recv(65536):
                    pass
            except OSError:
                pass
    finally:
        sock.close()
    return int(answer.split(b" ", 2)[1]), answer, at_answer


def test_a_strangers_body_is_never_read_and_bodies_are_capped(server):
    """Issue 19 #2: the body was read (and parsed) before the token was checked, with no limit."""
    pid = server.proc.pid
    with server.client() as anon:
        r = anon.post("/api/runs", content=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", r.text  # not 422: nothing was parsed
    before = memory_kib(pid)
    size = 50 << 20
    status, answer, at_answer = post_big(server, "/api/runs", size)
    after = memory_kib(pid)
    print(f"server memory before {before}, after {after} (KiB); answered after {at_answer >> 20} MiB of {size >> 20} MiB were sent")
    assert status == 401 and b"not logged in" in answer, answer[:500]
    assert at_answer < size // 2  # answered from the headers, not after the body
    assert after["VmHWM"] - before["VmHWM"] < 16 << 10  # the 50 MiB never sat in the server's memory
    # Logged in, a body past the cap (1 MiB by default): 413, declared or not, and nothing buffered either.
    op = server.token("op", "operator")
    status, answer, _ = post_big(server, "/api/runs", 2 << 20, {"Authorization": f"Bearer {op}"})
    assert status == 413, answer[:500]
    with server.client(op) as c:
        chunked = c.post("/api/runs", content=iter([b'{"runbook": "echo", "vars": {"GREETING": "', b"x" * (2 << 20), b'"}}']))
        assert chunked.status_code == 413 and "chunked" in chunked.request.headers.get("transfer-encoding", ""), chunked.text
        assert c.get("/api/runs").json()["total"] == 0
    assert memory_kib(pid)["VmHWM"] - before["VmHWM"] < 16 << 10


def test_errors_show_no_server_paths(server, home, runbooks):
    op = server.token("op", "operator")
    hidden = [str(runbooks), str(home), str(runbooks.parent), str(REPO)]
    with server.client(op) as c:
        r = c.post("/api/runs", json={"runbook": "broken"})
        assert r.status_code == 422, r.text
        assert "broken.yaml" in r.text and "scripts/missing.sh not found" in r.text and r.json()["error"]["file"] == "broken.yaml"
        (listed,) = [b for b in c.get("/api/runbooks").json() if b["name"] == "broken"]
        assert "scripts/missing.sh not found" in listed["error"]
        r404 = c.post("/api/runs", json={"runbook": "nope"})
        assert r404.status_code == 404 and "runbooks directory" in r404.text
        for answer in (r.text, json.dumps(listed), r404.text):
            assert not [h for h in hidden if h in answer], answer


def test_an_admin_never_signals_a_process_that_took_a_dead_runs_pid(server, home):
    """The run's record names a PID; a later process with that PID (even one called sshexec) is not the run's."""
    from sqlalchemy import update

    from sshexec.core.local import process_identity
    from sshexec.store.history import History
    from sshexec.store.schema import runs

    admin = server.token("root", "admin")
    history = History(home)
    history.start_run("20260101-000000-0pid00", "rb", runbook_path="/rb.yaml", inventory="", variables={})
    assert history.run("20260101-000000-0pid00").pid_start == process_identity(os.getpid())  # recorded with the run
    impostor = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "sshexec-impostor"])
    this_run = runs.c.id == "20260101-000000-0pid00"
    try:
        with history.db.write() as db:  # the run's process is gone, and the impostor got its PID
            db.execute(update(runs).where(this_run).values(pid=impostor.pid))
        assert history.run("20260101-000000-0pid00").status == "interrupted"  # that PID is another process
        with server.client(admin) as c:
            r = c.post("/api/runs/20260101-000000-0pid00/cancel")
            assert r.status_code == 409, r.text
            assert impostor.poll() is None  # not signalled
            # The check can fail the other way: the same process, recorded as such, is signalled.
            with history.db.write() as db:
                db.execute(update(runs).where(this_run).values(pid_start=process_identity(impostor.pid)))
            assert c.post("/api/runs/20260101-000000-0pid00/cancel").json()["status"] == "signalled"
            assert impostor.wait(60) == -signal.SIGTERM
        # Who asked is in the database, where the run's own process reads it when the signal comes.
        assert history.cancelled_by("20260101-000000-0pid00").startswith("token:root through sshexec serve on ")
    finally:
        if impostor.poll() is None:
            impostor.kill()
            impostor.wait()


def raw_get(server, path: str, token: str) -> tuple[int, bytes]:
    """GET exactly `path`, byte for byte (httpx would normalise `..` away)."""
    u = urlsplit(server.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.putheader("Authorization", f"Bearer {token}")
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def test_artifact_paths_never_leave_the_run(server, home):
    op = server.token("op", "operator")
    run_id = start(server, op, "demo")
    assert follow_log(server, op, run_id)[1]["status"] == "succeeded"
    with server.client(op) as c:
        (art,) = c.get(f"/api/runs/{run_id}").json()["artifacts"]
    worker, name = art["worker"], art["name"]
    assert raw_get(server, f"/api/runs/{run_id}/artifacts/{worker}/{name}", op)[0] == 200
    (home / "secret.txt").write_text("outside the run")
    hostile = [
        f"/api/runs/{run_id}/artifacts/{worker}/../../output.log",
        f"/api/runs/{run_id}/artifacts/{worker}/..%2F..%2Foutput.log",
        f"/api/runs/{run_id}/artifacts/{worker}%2F..%2F..%2F..%2F/history.db",
        f"/api/runs/{run_id}/artifacts/..%2F..%2F..%2Fsecret.txt/x",
        f"/api/runs/{run_id}/artifacts/{worker}/%2E%2E%2F%2E%2E%2F%2E%2E%2Fsecret.txt",
        f"/api/runs/{run_id}/artifacts/{worker}/..",
        f"/api/runs/..%2F{run_id}/artifacts/{worker}/{name}",
        f"/api/runs/{run_id}/artifacts/{worker}/{name}%2F..%2F..%2F..%2Fsecret.txt",
        f"/api/runs/{run_id}/artifacts/{worker}/%2Fetc%2Fpasswd",
    ]
    for path in hostile:
        status, body = raw_get(server, path, op)
        assert status == 404, (path, status, body[:200])
        assert b"outside the run" not in body and b"SQLite" not in body and b"root:" not in body


def login(server, client, token: str):
    """The browser's way in: the login form's CSRF value, then the token for a session cookie."""
    page = client.get("/login")
    csrf = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    r = client.post("/login", data={"token": token, "csrf": csrf, "next": "/"})
    assert r.status_code == 303 and r.headers["location"] == "/", r.text
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    return client.get("/").text.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]


def test_a_script_tag_in_a_variable_shows_as_text(server):
    op = server.token("op", "operator")
    evil = "<script>alert('x')</script><img src=x onerror=alert(1)>"
    run_id = start(server, op, "echo", GREETING=evil)
    text, end = follow_log(server, op, run_id)
    assert end["status"] == "succeeded" and f"greeting: {evil}" in text  # the log holds the bytes as printed
    with server.client(op) as c:
        assert c.get(f"/api/runs/{run_id}").json()["variables"]["GREETING"] == evil
    with server.client() as browser:
        login(server, browser, op)
        page = browser.get(f"/runs/{run_id}")
        assert page.status_code == 200
        assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in page.text
        assert "<script>alert" not in page.text and "<img src=x" not in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]  # and no inline script could run anyway
        listing = browser.get("/")
        assert "<script>alert" not in listing.text


def test_page_posts_need_the_csrf_token(server):
    op = server.token("op", "operator")
    with server.client() as browser:
        csrf = login(server, browser, op)
        assert browser.get("/api/me").json() == {"name": "op", "role": "operator", "via": "session"}
        assert browser.post("/api/runs", json={"runbook": "echo"}).status_code == 403  # no token
        assert browser.post("/api/runs", json={"runbook": "echo"}, headers={"X-CSRF-Token": "forged"}).status_code == 403
        r = browser.post("/api/runs", json={"runbook": "echo"}, headers={"X-CSRF-Token": csrf, "Origin": "http://evil.example"})
        assert r.status_code == 403 and "evil.example" in r.json()["detail"]
        r = browser.post("/api/runs/no-such-run/cancel", headers={"X-CSRF-Token": csrf, "Origin": server.url})
        assert r.status_code == 404  # past the CSRF check
        assert browser.post("/logout", data={"csrf": "forged"}).status_code == 403
        # Nothing was started, and the session is still there after the refused POSTs.
        assert browser.get("/api/runs").json()["total"] == 0 and browser.get("/api/me").status_code == 200
        assert browser.post("/logout", data={"csrf": csrf}).status_code == 303
        assert browser.get("/api/runs").status_code == 401
    with server.client() as browser:
        browser.get("/login")
        assert browser.post("/login", data={"token": op, "csrf": "guessed", "next": "/"}).status_code == 403  # login CSRF
        assert browser.post("/login", data={"token": op, "csrf": "", "next": "/"}).status_code == 403
        assert "sshexec_session" not in browser.cookies and browser.get("/api/me").status_code == 401  # no session opened
    with server.client(op) as c:
        assert c.get("/api/runs").json()["total"] == 0


def login_csrf(browser) -> str:
    page = browser.get("/login")
    return page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]


def test_failed_logins_are_braked_and_a_valid_token_always_passes(server):
    op = server.token("op", "operator")
    with server.client() as browser:
        codes = [browser.post("/login", data={"token": f"sx_wrong{i}", "csrf": login_csrf(browser)}).status_code for i in range(7)]
        assert codes[:5] == [401] * 5 and codes[5:] == [429, 429]
        r = browser.post("/login", data={"token": "sx_wrong", "csrf": login_csrf(browser)})
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
        # Braked: the right token still passes, at the form and in the API; only failures wait.
        r = browser.post("/login", data={"token": op, "csrf": login_csrf(browser)})
        assert r.status_code == 303, r.text
    with server.client(op) as c:
        assert c.get("/api/runs").status_code == 200
    # Without --forwarded-allow-ips, X-Forwarded-For is anybody's header: the peer is the client, and it is braked.
    with server.client("sx_wrong") as c:
        assert c.get("/api/runs", headers={"X-Forwarded-For": "192.0.2.99"}).status_code == 429


def test_behind_a_proxy_the_brake_counts_each_client(lab_env, runbooks, home):
    """--forwarded-allow-ips 127.0.0.1: this test is the proxy, and the clients are the addresses it names."""
    with running_server(runbooks=runbooks, inventory=lab_env.inventory_path, home=home, extra_args=("--forwarded-allow-ips", "127.0.0.1")) as server:
        op = server.token("op", "operator")

        def get(token: str, client: str) -> int:
            with server.client(token) as c:
                return c.get("/api/runs", headers={"X-Forwarded-For": client}).status_code

        assert [get("sx_wrong", "192.0.2.7") for _ in range(6)] == [401] * 5 + [429]
        assert get("sx_wrong", "192.0.2.8") == 401  # another client behind the same proxy
        assert get(op, "192.0.2.7") == 200  # the braked client's own valid token


def test_an_open_log_stream_ends_when_its_token_is_revoked_or_its_session_ends(lab_env, runbooks, home, no_leftovers):
    """Issue 19 #6, with --stream-recheck 0.5 instead of the default 30 s."""
    from serverkit import read_events

    with running_server(runbooks=runbooks, inventory=lab_env.inventory_path, home=home, extra_args=("--stream-recheck", "0.5")) as server:
        op, reader, browser_token = server.token("op", "operator"), server.token("reader", "viewer"), server.token("browser", "viewer")
        run_id = start(server, op, "long")
        streams: dict[str, list[str]] = {"bearer": [], "session": []}
        browser = server.client()
        csrf = login(server, browser, browser_token)

        def follow(name: str, client) -> None:
            with client.stream("GET", f"/api/runs/{run_id}/log", timeout=httpx.Timeout(60, read=120)) as r:
                assert r.status_code == 200
                for event, _, _ in read_events(r):
                    streams[name].append(event)
            streams[name].append("closed")

        threads = {name: threading.Thread(target=follow, args=(name, c), daemon=True) for name, c in (("bearer", server.client(reader)), ("session", browser))}
        for t in threads.values():
            t.start()
        wait_for(lambda: all("log" in seen for seen in streams.values()), "both streams to show the log")
        assert browser.post("/logout", data={"csrf": csrf}).status_code == 303
        threads["session"].join(60)
        assert streams["session"][-2:] == ["revoked", "closed"] and threads["bearer"].is_alive()  # the other stream goes on
        subprocess.run([sys.executable, "-m", "sshexec", "token", "revoke", "reader"], env={**os.environ, "SSHEXEC_HOME": str(home)}, check=True, timeout=60)
        threads["bearer"].join(60)
        assert streams["bearer"][-2:] == ["revoked", "closed"] and "end" not in streams["bearer"]
        with server.client(op) as c:
            assert c.get(f"/api/runs/{run_id}").json()["status"] == "running"  # the run goes on: only the streams ended
            assert c.post(f"/api/runs/{run_id}/cancel").status_code == 202
        assert follow_log(server, op, run_id)[1]["status"] == "cancelled"


def test_workers_health_is_cached_with_its_age(server, lab):
    viewer, op = server.token("v", "viewer"), server.token("op", "operator")
    with server.client(viewer) as v, server.client(op) as o:
        first = v.get("/api/workers").json()
        assert first["healthy"] and {w["worker"] for w in first["workers"]} >= {"w1", "w2", "w3"}
        again = v.get("/api/workers").json()
        assert again["checked_at"] == first["checked_at"] and again["age"] >= first["age"]
        fresh = o.get("/api/workers", params={"refresh": "true"}).json()
        assert fresh["checked_at"] > first["checked_at"]
        assert [b["name"] for b in v.get("/api/runbooks").json()] == ["broken", "demo", "echo", "lines", "long", "release"]


def test_a_cli_run_shows_in_the_server_and_is_followed_live(server, lab_env, home, runbooks, no_leftovers):
    """One history: `sshexec run` in another process, seen and followed by the server, cancelled by an admin."""
    viewer, op, admin = server.token("v", "viewer"), server.token("op", "operator"), server.token("root", "admin")
    t0 = time.monotonic()
    cli = subprocess.Popen([sys.executable, "-m", "sshexec", "run", str(runbooks / "long.yaml")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        with server.client(viewer) as v:
            runs = wait_for(lambda: v.get("/api/runs").json()["runs"], "the CLI's run in the server")
            print(f"the CLI's run appeared in the server {time.monotonic() - t0:.2f} s after the process started")
            (rec,) = runs
            assert rec["status"] == "running" and rec["pid"] == cli.pid
            run_id = rec["id"]
        with server.client(op) as o:
            r = o.post(f"/api/runs/{run_id}/cancel")
            assert r.status_code == 403 and "admin" in r.json()["detail"]
        with server.client(admin) as a:

            def cancel_once_started(chunk):
                if "started sleeping" in chunk:
                    assert a.post(f"/api/runs/{run_id}/cancel").json() == {"run_id": run_id, "status": "signalled"}

            text, end = follow_log(server, viewer, run_id, on_line=cancel_once_started)
        assert "started sleeping" in text
        assert end == {"status": "cancelled", "exit_code": 130}
        assert cli.wait(120) == 130
        # The command line says who stopped it, and so does the record.
        said = " ".join(cli.stderr.read().split())
        assert "cancelling (asked by token:root through sshexec serve on " in said, said
        with server.client(viewer) as v:
            assert v.get(f"/api/runs/{run_id}").json()["message"].startswith("cancelled by token:root through sshexec serve")
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()


def test_sigterm_cancels_the_servers_runs(lab_env, runbooks, home, no_leftovers):
    """With --drain-timeout 0 (SIGTERM drains the node first otherwise: test_cluster.py)."""
    with running_server(runbooks=runbooks, inventory=lab_env.inventory_path, home=home, extra_args=["--drain-timeout", "0"]) as server:
        op = server.token("op", "operator")
        run_id = start(server, op, "long")
        wait_for(lambda: b"started sleeping" in stored_log(run_id, home), "the step to start")
        t0 = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(120)
        print(f"the server stopped {time.monotonic() - t0:.2f} s after SIGTERM")
    assert code == 0, "".join(server.stderr)
    from sshexec.store.history import History

    rec = History(home).run(run_id)
    assert rec.status == "cancelled" and rec.exit_code == 130


def test_logs_follow_tails_a_server_run_to_its_end(server, home):
    """`sshexec logs --follow` (issue 15): the same tailing code, on a run the server started."""
    op = server.token("op", "operator")
    run_id = start(server, op, "lines")
    res = subprocess.run([sys.executable, "-m", "sshexec", "logs", "--follow", run_id], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert res.returncode == 0, res.stderr
    for i in range(1, 6):
        assert f"/count | line {i}\n" in res.stdout and f"/count ! err {i}\n" in res.stdout
    assert "succeeded (exit 0)" in res.stdout


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_serves_https_with_secure_cookies(lab_env, runbooks, home, tmp_path):
    cert, key = self_signed(tmp_path)
    with running_server(runbooks=runbooks, inventory=lab_env.inventory_path, home=home, extra_args=("--tls-cert", cert, "--tls-key", key)) as server:
        assert server.url.startswith("https://")
        op = server.token("op", "operator")
        trust = ssl.create_default_context(cafile=str(cert))
        with server.client(op, verify=trust) as c:
            assert c.get("/api/runs").status_code == 200
        with server.client(verify=trust) as browser:
            page = browser.get("/login")
            assert "Secure" in page.headers["set-cookie"]
            csrf = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
            r = browser.post("/login", data={"token": op, "csrf": csrf})
            assert r.status_code == 303 and "Secure" in r.headers["set-cookie"] and "HttpOnly" in r.headers["set-cookie"]
