"""`sshexec serve` in a real browser: headless Debian chromium through selenium, against a real server and the lab."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from browserkit import SCREENSHOTS, browser, ended, log_in, log_lines, start_from_runbooks_page, status, texts  # noqa: F401 - browser: the fixture
from serverkit import demo_runbooks, lines_runbook, long_runbook, running_server, wait_for


@pytest.fixture
def server(lab_env, tmp_path, monkeypatch):
    monkeypatch.setenv("SSHEXEC_DEMO_TOKEN", "browser-secret-" + os.urandom(4).hex())
    runbooks = demo_runbooks(tmp_path / "runbooks", lab_env, extra={"long": long_runbook(lab_env), "lines": lines_runbook(lab_env, lines=8, pause=0.7)})
    with running_server(runbooks=runbooks, inventory=lab_env.inventory_path, home=Path(os.environ["SSHEXEC_HOME"])) as s:
        yield s


def test_log_in_start_a_run_watch_it_live_and_open_an_artifact(browser, server, no_leftovers):
    from selenium.webdriver.common.by import By

    log_in(browser, server, server.token("ops", "operator"))
    # A run that prints a line every 0.7 s: lines must show up while it is still running.
    start_from_runbooks_page(browser, server, "lines")
    live = wait_for(lambda: (lambda lines: lines if len(lines) >= 3 and status(browser) == "running" else None)(log_lines(browser)), "three log lines while the run goes on")
    assert live[0].endswith("/count | line 1") or any(line.endswith("| line 1") for line in live)
    wait_for(lambda: ended(browser) == "succeeded", "succeeded", tries=1200)
    assert status(browser) == "succeeded"
    lines = log_lines(browser)
    assert sum("| line" in line for line in lines) == 8 and sum("! err" in line for line in lines) == 8
    # ANSI colours as classes, other escapes dropped: no control character reaches the page.
    assert texts(browser, "#log span.fg1.b") == ["red alert"]
    assert any(line.endswith("| red alert then plain") for line in lines)
    assert not any("\x1b" in line or "\x07" in line or "a title" in line for line in lines)
    stderr = texts(browser, "#log .line.stderr")
    assert len(stderr) == 8 and all(" ! err" in line for line in stderr)  # stderr told apart
    # The demo, with a variable holding markup: text on the page, never a tag.
    run_id = start_from_runbooks_page(browser, server, "demo", GREETING="<b>hi</b><script>window.pwned=1</script>")
    wait_for(lambda: ended(browser) == "succeeded", "the demo to succeed", tries=3000)
    assert browser.execute_script("return window.pwned === undefined")
    assert any("<b>hi</b><script>window.pwned=1</script> from" in line for line in log_lines(browser))
    assert not browser.find_elements(By.CSS_SELECTOR, "#log b, #variables b")
    assert any("calling the API with token ********" in line for line in log_lines(browser))
    steps = texts(browser, "#steps tbody tr")
    assert len(steps) >= 3 and all("succeeded" in row for row in steps)
    outputs = "".join(texts(browser, "#outputs"))
    assert "build[" in outputs and "app-1.4.2.tar.gz" in outputs
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOTS / f"run-page-{run_id}.png"
    browser.execute_script("document.getElementById('follow').checked = false; document.getElementById('log').scrollTop = 0;")
    assert browser.save_screenshot(str(shot))
    print(f"screenshot of the run page: {shot}")
    link = browser.find_element(By.CSS_SELECTOR, "#artifacts a.artifact")
    assert link.text.endswith("/app-1.4.2.tar.gz")
    link.click()
    got = wait_for(lambda: [p for p in browser.downloads.iterdir() if p.name == "app-1.4.2.tar.gz"], "the artifact's download")
    assert got[0].read_bytes()[:2] == b"\x1f\x8b"


def test_a_viewer_sees_no_start_form_nor_cancel_button(browser, no_leftovers, server):
    """The same running run's page, for a viewer (no cancel button) and then an operator (who cancels it with it).

    no_leftovers comes before server: a run this test failed to cancel is cancelled by the server's SIGTERM first.
    """
    from selenium.webdriver.common.by import By

    op = server.token("ops", "operator")
    with server.client(op) as c:
        run_id = c.post("/api/runs", json={"runbook": "long"}).json()["run_id"]
    log_in(browser, server, server.token("watcher", "viewer"))
    browser.get(server.url + "/runbooks")
    assert browser.find_elements(By.CSS_SELECTOR, "section.runbook") and not browser.find_elements(By.CSS_SELECTOR, "form.start")
    browser.get(server.url + f"/runs/{run_id}")
    wait_for(lambda: any("started sleeping" in line for line in log_lines(browser)), "the step to start, on the viewer's page")
    assert status(browser) == "running" and browser.find_elements(By.ID, "cancel") == []
    browser.get(server.url + "/workers")
    wait_for(lambda: len(texts(browser, "#workers tbody tr")) >= 3, "the workers' health")
    assert all("healthy" in row for row in texts(browser, "#workers tbody tr"))
    # An operator, on the same page: the button is there, and it cancels the run.
    browser.delete_all_cookies()
    log_in(browser, server, op)
    browser.get(server.url + f"/runs/{run_id}")
    wait_for(lambda: any("started sleeping" in line for line in log_lines(browser)), "the step, on the operator's page")
    button = browser.find_element(By.ID, "cancel")
    assert button.is_displayed() and status(browser) == "running"
    button.click()
    wait_for(lambda: ended(browser) == "cancelled", "the run to be cancelled", tries=1200)
    assert status(browser) == "cancelled" and browser.find_element(By.ID, "run-exit").text == "130"
    assert not browser.find_element(By.ID, "cancel").is_displayed()
    assert "woke up" not in "".join(log_lines(browser))


def test_the_runs_list_updates_itself(browser, server):
    from selenium.webdriver.common.by import By

    op = server.token("ops", "operator")
    log_in(browser, server, op)
    assert not browser.find_elements(By.CSS_SELECTOR, "#runs tbody tr")
    with server.client(op) as c:
        run_id = c.post("/api/runs", json={"runbook": "lines"}).json()["run_id"]
    wait_for(lambda: texts(browser, f'#runs tr[data-run="{run_id}"]'), "the new run in the list")
    wait_for(lambda: "succeeded" in "".join(texts(browser, f'#runs tr[data-run="{run_id}"]')), "its end in the list", tries=1200)



def test_a_waiting_run_is_approved_from_its_page(browser, lab_env, tmp_path):
    """Issue 21: a run waits at its approval step; the operator approves it on the run page; it goes on to succeeded."""
    from selenium.webdriver.common.by import By

    from labkit import step

    gated = {"name": "gated", "steps": [
        step("build", f"{lab_env.registry_address}/sshexec/busybox:1", "echo built", syntax="sh", feed="lab"),
        {"name": "gate", "approval": {"message": "Ship build 7 to production?", "role": "operator", "timeout": "10m"}},
        step("deploy", f"{lab_env.registry_address}/sshexec/busybox:1", 'echo "deploying for $(get_sshexec_variable gate.decided_by)"', syntax="sh", feed="lab"),
    ]}  # fmt: skip
    runbooks = demo_runbooks(tmp_path / "runbooks", lab_env, extra={"gated": gated})
    with running_server(runbooks=runbooks, inventory=lab_env.inventory_path, home=Path(os.environ["SSHEXEC_HOME"])) as server:
        log_in(browser, server, server.token("approver", "operator"))
        run_id = start_from_runbooks_page(browser, server, "gated")
        wait_for(lambda: status(browser) == "waiting" and browser.find_element(By.ID, "approval").is_displayed(), "the run waiting, its approval shown", tries=1200)
        assert browser.find_element(By.ID, "approval-message").text == "Ship build 7 to production?"
        browser.find_element(By.ID, "approval-comment").send_keys("looks good")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        waiting_shot = SCREENSHOTS / f"approval-waiting-{run_id}.png"
        assert browser.save_screenshot(str(waiting_shot))
        browser.find_element(By.ID, "approve").click()
        wait_for(lambda: ended(browser) == "succeeded", "the approved run to succeed", tries=1200)
        assert not browser.find_element(By.ID, "approval").is_displayed()
        rows = texts(browser, "#steps tbody tr")
        assert any("gate" in r and "approved by token:approver: looks good" in r for r in rows), rows
        assert any("deploying for token:approver" in line for line in log_lines(browser))
        shot = SCREENSHOTS / f"approval-approved-{run_id}.png"
        assert browser.save_screenshot(str(shot))
        print(f"screenshot of the run page waiting for approval: {waiting_shot}; after approving: {shot}")
