"""Notifications and /metrics (issue 21), on SQLite and PostgreSQL, with a real server, the lab, and local receivers:
signed deliveries, 500 twice then 200 gives three recorded tries, a hanging receiver holds up no run, values masked;
/metrics parsed by prometheus-client's own parser, with the counts of the runs made."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from labkit import sshexec, step, write_runbook
from prometheus_client.parser import text_string_to_metric_families
from serverkit import busybox, follow_log, running_server

SECRET = "hook-secret-" + os.urandom(6).hex()
RUN_SECRET = "run-secret-" + os.urandom(6).hex()


class Receiver:
    """An HTTP receiver on 127.0.0.1: /ok answers 200, /flaky 500 twice then 200 (each run), /hang waits until released, then 200."""

    def __init__(self):
        self.got: dict[str, list[tuple[dict, bytes]]] = {"/ok": [], "/flaky": [], "/hang": []}
        self.release = threading.Event()
        self.hanging = threading.Event()
        recv = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                recv.got.setdefault(self.path, []).append(({k.lower(): v for k, v in self.headers.items()}, body))
                code = 200
                # 500 twice then 200 for each run's delivery: the deliveries of several runs may interleave.
                if self.path == "/flaky" and sum(json.loads(b)["run_id"] == json.loads(body)["run_id"] for _, b in recv.got["/flaky"]) <= 2:
                    code = 500
                if self.path == "/hang":
                    recv.hanging.set()
                    recv.release.wait(120)  # bounded: a failing test never leaves it forever
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.release.set()
        self.server.shutdown()


@contextmanager
def receiver():
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


def wait_until(check, what: str, limit: float = 120):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"not within {limit} s: {what}")


def signed(headers: dict, body: bytes) -> bool:
    want = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers["x-sshexec-signature"], want)


def metrics_of(text: str) -> dict:
    """{(name, labels as a sorted tuple): value} from prometheus-client's parser."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_notifications_and_metrics(lab_env, db_url, tmp_path, monkeypatch):
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    monkeypatch.setenv("RUN_SECRET", RUN_SECRET)
    env = {**os.environ}
    books = tmp_path / "runbooks"
    books.mkdir()
    write_runbook(books / "echo.yaml", {"name": "echo", "steps": [step("say", busybox(lab_env), "echo hello", syntax="sh", feed="lab")]})
    write_runbook(books / "bad.yaml", {"name": "bad", "sensitive_variables": {"TOKEN": {"env": "RUN_SECRET"}},
                                        "steps": [step("s", busybox(lab_env), 'fail_step "refused with $TOKEN"', syntax="sh", feed="lab")]})  # fmt: skip
    with receiver() as rx:
        config = tmp_path / "server.yaml"
        config.write_text(json.dumps({"notifications": [{"name": "ok", "url": rx.url + "/ok", "events": ["run.succeeded", "run.failed"], "secret_env": "HOOK_SECRET"}]}))
        for name, extra in (("flaky", ["--backoff", "0.2"]), ("hang", ["--attempts", "1"])):
            res = sshexec("notify", "add", name, "--url", rx.url + "/" + name, "--events", "run.succeeded", "--secret-env", "HOOK_SECRET", *extra, env=env)
            assert res.returncode == 0, res.stderr
        assert SECRET not in sshexec("notify", "list", "--json", env=env).stdout
        trail = sshexec("audit", "--json", "--action", "notify.add", env=env).stdout
        assert [e["target"] for e in json.loads(trail)] == ["flaky", "hang"] and rx.url not in trail and SECRET not in trail  # a webhook URL may be a secret
        home = Path(os.environ["SSHEXEC_HOME"])
        with running_server(runbooks=books, inventory=lab_env.inventory_path, home=home, extra_args=["--config", str(config), "--metrics-bind", "127.0.0.1:0"]) as srv:
            op = srv.token("op", "operator")
            viewer = srv.token("v", "viewer")
            with srv.client(op) as c:
                assert c.get("/api/workers").status_code == 200  # the check whose health /metrics reports
                first = c.post("/api/runs", json={"runbook": "echo", "vars": {}}).json()["run_id"]
                assert follow_log(srv, op, first)[1]["status"] == "succeeded"
                # The hanging receiver now holds its delivery of the first run's end...
                assert rx.hanging.wait(60), "the hanging receiver was never called"
                # ...and runs go on as if it were not there: one succeeds, one fails, while it still hangs.
                second = c.post("/api/runs", json={"runbook": "echo", "vars": {}}).json()["run_id"]
                assert follow_log(srv, op, second)[1]["status"] == "succeeded"
                bad = c.post("/api/runs", json={"runbook": "bad", "vars": {}}).json()["run_id"]
                assert follow_log(srv, op, bad)[1]["status"] == "failed"
                assert not rx.release.is_set() and len(rx.got["/hang"]) >= 1  # it still holds every request it got
                rx.release.set()
            # 500, 500, 200: three tries of the first run's delivery to /flaky, recorded.
            log = lambda: json.loads(sshexec("notify", "log", "--json", "--run", first, env=env).stdout)  # noqa: E731
            flaky = wait_until(lambda: [d for d in log() if d["endpoint"] == "flaky" and d["state"] == "delivered"], "the flaky delivery delivered")[0]
            assert [t["status_code"] for t in flaky["tries"]] == [500, 500, 200] and flaky["attempts"] == 3
            assert [t["error"] for t in flaky["tries"]] == ["HTTP 500", "HTTP 500", None]
            wait_until(lambda: len(rx.got["/ok"]) >= 3, "the ok receiver got three runs' ends")
            wait_until(lambda: all(d["state"] != "pending" for d in json.loads(sshexec("notify", "log", "--json", env=env).stdout)), "nothing pending")
            # Every request is signed with the endpoint's secret, over the exact body.
            requests = [r for got in rx.got.values() for r in got]
            assert requests and all(signed(h, b) for h, b in requests)
            events = {json.loads(b)["run_id"]: json.loads(b) for h, b in rx.got["/ok"]}
            assert {k: v["event"] for k, v in events.items()} == {first: "run.succeeded", second: "run.succeeded", bad: "run.failed"}
            assert {h["x-sshexec-event"] for h, _ in rx.got["/ok"]} == {"run.succeeded", "run.failed"}
            assert events[bad]["run"]["status"] == "failed" and "refused with ********" in events[bad]["run"]["message"]
            assert all(RUN_SECRET.encode() not in b and SECRET.encode() not in b for _, b in requests)
            # The page lists them for an operator, and not for a viewer.
            with srv.client(op) as c:
                page = c.get("/notifications")
                assert page.status_code == 200 and "flaky" in page.text and first in page.text
                api = c.get("/api/notifications").json()
                assert SECRET not in json.dumps(api) and {e["name"] for e in api["endpoints"]} == {"ok", "flaky", "hang"}
            with srv.client(viewer) as c:
                assert c.get("/notifications").status_code == 403
                # /metrics: any token, parsed by prometheus-client's parser.
                text = c.get("/metrics").text
            assert httpx.get(srv.url + "/metrics").status_code == 401
            apart = next(line for line in srv.stderr if "/metrics (no login)" in line).split("metrics at ", 1)[1].split()[0]
            assert metrics_of(httpx.get(apart).text).keys() == metrics_of(text).keys()
            m = metrics_of(text)
            assert m[("sshexec_runs", (("runbook", "echo"), ("status", "succeeded")))] == 2
            assert m[("sshexec_runs", (("runbook", "bad"), ("status", "failed")))] == 1
            assert m[("sshexec_step_duration_seconds_count", (("runbook", "echo"),))] == 2
            assert m[("sshexec_step_duration_seconds_count", (("runbook", "bad"),))] == 1
            assert m[("sshexec_step_duration_seconds_bucket", (("le", "+Inf"), ("runbook", "echo")))] == 2
            assert m[("sshexec_queue_depth", ())] == 0
            # Nothing runs now: the server's node (up, the cluster's) shows 0, and no other node or host shows.
            assert {k[1]: v for k, v in m.items() if k[0] == "sshexec_runs_running"} == {(("node", socket.gethostname()),): 0}
            health = {dict(k[1])["worker"]: v for k, v in m.items() if k[0] == "sshexec_worker_healthy"}
            assert health and health["w1"] == 1.0
            tries = [t for d in json.loads(sshexec("notify", "log", "--json", env=env).stdout) for t in d["tries"]]
            failed = sum(1 for t in tries if t["status_code"] is None or not 200 <= t["status_code"] < 300)
            assert failed >= 2 and m[("sshexec_notification_failed_attempts_total", ())] == failed
            assert m[("sshexec_notification_deliveries", (("state", "delivered"),))] >= 4
        # Without a server, `sshexec run` sends its own run's end itself.
        before = len(rx.got["/ok"])
        res = sshexec("run", books / "echo.yaml", "--json", env=env)
        assert res.returncode == 0, res.stderr
        run_id = json.loads(res.stdout)["run_id"]
        assert len(rx.got["/ok"]) == before + 1 and json.loads(rx.got["/ok"][-1][1])["run_id"] == run_id


@pytest.mark.parametrize("events", ["run.finished", ""])
def test_notify_add_refuses_bad_events_and_a_secret_on_argv(events, tmp_path):
    res = sshexec("notify", "add", "x", "--url", "http://127.0.0.1:9/x", "--events", events or "run.failed")
    assert res.returncode == 2
    assert ("run.finished" in res.stderr) if events else ("--secret-env" in res.stderr)
