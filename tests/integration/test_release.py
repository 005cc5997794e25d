"""Release semantics on the real lab: rolling batches, max_failures, if: conditions, a retry after a
killed sshd, and --retry-failed (issue 11's "Must show"). A script fails on purpose on w3 only."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import yaml

from labkit import docker, extra_worker, inventory_file, sshexec, start_run, step, stop_run, wait_for_line, write_runbook

pytestmark = pytest.mark.usefixtures("no_leftovers")

# Inventory order puts w3 in the first batch of two.
ORDER = ["w1", "w3", "w2", "w4"]
FAIL_ON_W3 = 'echo "deploying on $SSHEXEC_WORKER"; set_sshexec_variable Version "$SSHEXEC_WORKER-2.0"; [ "$SSHEXEC_WORKER" = w3 ] && exit 1; echo "deployed on $SSHEXEC_WORKER"'


@pytest.fixture(scope="module")
def w4(lab):
    """A fourth worker, beside the lab's three, for the whole module."""
    with extra_worker(lab, name="w4") as xw:
        yield xw


def environment(lab, w4, tmp_path, names):
    """The environment of a user whose inventory holds these workers, in this order, in pool `linux`."""
    lab_workers = {w["name"]: w for w in yaml.safe_load(lab.inventory_path.read_text())["workers"]}
    lab_workers["w4"] = {"name": "w4", "host": "127.0.0.1", "port": w4.port, "pools": ["linux"], "work_root": str(w4.work)}
    known = lab.known_hosts_path.read_text() + w4.host_keys()
    inv = inventory_file(tmp_path, lab, [lab_workers[n] for n in names], known_hosts=known, name="-".join(names) + ".yaml")
    return {**os.environ, "SSHEXEC_INVENTORY": str(inv), "SSHEXEC_ANY_ORDER": "inventory"}


@pytest.fixture
def four(lab_env, w4, tmp_path):
    """Four workers, w3 in the first batch of two."""
    return environment(lab_env, w4, tmp_path, ORDER)


def run_json(env, *args):
    res = sshexec("run", *args, "--json", env=env)
    assert res.stdout.strip().startswith("{"), res.stderr[-2000:]
    return res, json.loads(res.stdout)


def logs(env, run_id):
    return json.loads(sshexec("logs", run_id, "--json", env=env).stdout)


def statuses(data, step_name):
    return {s["worker"]: s["status"] for s in data["steps"] if s["step"] == step_name}


def rolling_runbook(tmp_path, lab, rolling, name="rb.yaml", script=FAIL_ON_W3):
    return write_runbook(tmp_path / name, {"name": "release", "steps": [
        step("deploy", lab.image_ref("busybox"), script, syntax="sh", target="each", rolling=rolling),
    ]})  # fmt: skip


def test_a_failure_in_the_first_batch_stops_the_rollout(four, lab_env, tmp_path):
    rb = rolling_runbook(tmp_path, lab_env, {"batch": 2})
    res, data = run_json(four, rb)
    assert res.returncode == 1, res.stderr[-2000:]
    assert statuses(data, "deploy") == {"w1": "succeeded", "w3": "failed", "w2": "skipped", "w4": "skipped"}
    skipped = [s for s in data["steps"] if s["status"] == "skipped"]
    assert {s["message"] for s in skipped} == {"not started: 1 worker failed by batch 1 of 2, more than max_failures 0"}
    # the second batch never started: nothing of it ran, nothing of it is in the log
    assert "deploying on w2" not in res.stderr and "deploying on w4" not in res.stderr
    assert "deployed on w1" in res.stderr and "step deploy: batch 1/2: w1, w3" in res.stderr
    assert "batch 2/2" not in res.stderr
    stored = logs(four, data["run_id"])
    assert {s["worker"]: (s["status"], s["message"]) for s in stored["steps"]}["w4"] == ("skipped", skipped[0]["message"])
    text = sshexec("logs", data["run_id"], env=four).stdout
    assert "deploy on w2: skipped (exit None) not started: 1 worker failed" in text
    assert "w2/deploy # sshexec: skipped: not started" in text


def test_max_failures_lets_the_rollout_go_on_and_exits_1(four, lab_env, tmp_path):
    rb = rolling_runbook(tmp_path, lab_env, {"batch": 2, "max_failures": 1})
    res, data = run_json(four, rb)
    assert res.returncode == 1 and data["status"] == "failed"
    assert statuses(data, "deploy") == {"w1": "succeeded", "w3": "failed", "w2": "succeeded", "w4": "succeeded"}
    assert "step deploy: batch 2/2: w2, w4" in res.stderr
    assert data["outputs"]["deploy[w4].Version"] == "w4-2.0"


# Each worker says when it enters (with its directory), then waits inside its step until the test
# drops a file there; it records its start and end on its own clock (bounded, if never let go).
INSIDE = """set_sshexec_variable start "$(date +%s.%N)"
echo "inside in $PWD"
end=$((SECONDS + 120))
while [ ! -e go ] && [ "$SECONDS" -lt "$end" ]; do sleep 0.1; done
[ -e go ] || fail_step "never let go"
set_sshexec_variable end "$(date +%s.%N)"
"""


def wait_inside(proc, names: set[str], others: set[str]) -> dict[str, Path]:
    """Read the live output until every worker of `names` is inside its step; none of `others` may be."""
    found: dict[str, Path] = {}
    while set(found) != names:
        line = wait_for_line(proc, "/deploy | inside in ", stderr=True)[-1]
        worker, where = line.split("/deploy | inside in ")
        assert worker.strip() not in others, f"{worker.strip()} started while {sorted(names)} were inside theirs"
        found[worker.strip()] = Path(where.strip())
    return found


def test_rolling_batches_run_in_order_and_together_by_the_workers_clocks(four, lab_env, tmp_path):
    """batch 2 of [w1, w3] [w2, w4]: both of a batch are inside their steps at once (each waits for
    the test), the next batch starts only after, and the workers' own times agree."""
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "release", "steps": [
        step("deploy", lab_env.image_ref("tools"), INSIDE, target="each", rolling={"batch": 2}),  # bash and GNU date: %N
    ]})  # fmt: skip
    proc = start_run(rb, "--json", env=four)
    try:
        for batch, later in (({"w1", "w3"}, {"w2", "w4"}), ({"w2", "w4"}, set())):
            for where in wait_inside(proc, batch, later).values():  # all of the batch inside at once
                (where / "go").touch()
        out, err = proc.communicate(timeout=120)  # hang guard
    finally:
        stop_run(proc)
    assert proc.returncode == 0, err.decode()[-3000:]
    outs = json.loads(out)["outputs"]
    span = {w: (float(outs[f"deploy[{w}].start"]), float(outs[f"deploy[{w}].end"])) for w in ORDER}
    first, second = ("w1", "w3"), ("w2", "w4")
    assert max(span[w][1] for w in first) <= min(span[w][0] for w in second), span  # every batch-2 start after every batch-1 end
    for batch in (first, second):
        assert max(span[w][0] for w in batch) < min(span[w][1] for w in batch), span  # the workers of a batch overlapped


def conditional_runbook(tmp_path, lab):
    image = lab.image_ref("busybox")
    return write_runbook(tmp_path / "cond.yaml", {"name": "conditions", "steps": [
        step("deploy", image, FAIL_ON_W3, syntax="sh"),
        step("smoke", image, "echo smoke-ran", syntax="sh"),
        step("rollback", image, 'echo "rolling back from $(get_sshexec_variable deploy.Version)"', syntax="sh", **{"if": "failure"}),
        step("notify", image, "echo notify-ran", syntax="sh", **{"if": "always"}),
    ]})  # fmt: skip


def test_if_failure_runs_only_after_a_failure_and_if_always_runs_anyway(four, lab_env, tmp_path):
    rb = conditional_runbook(tmp_path, lab_env)
    ok, data = run_json(four, rb, "--worker", "w1")
    assert ok.returncode == 0
    assert [(s["step"], s["status"]) for s in data["steps"]] == [("deploy", "succeeded"), ("smoke", "succeeded"), ("rollback", "skipped"), ("notify", "succeeded")]
    assert "rolling back" not in ok.stderr and "notify-ran" in ok.stderr

    bad, data = run_json(four, rb, "--worker", "w3")
    assert bad.returncode == 1 and data["status"] == "failed"  # the first failure's, though rollback and notify succeeded
    assert [(s["step"], s["status"]) for s in data["steps"]] == [("deploy", "failed"), ("smoke", "skipped"), ("rollback", "succeeded"), ("notify", "succeeded")]
    assert "rolling back from w3-2.0" in bad.stderr  # the failed step's output, read by the rollback
    assert "smoke-ran" not in bad.stderr


def test_if_always_runs_after_one_ctrl_c_and_the_run_exits_130(four, lab_env, tmp_path):
    image = lab_env.image_ref("busybox")
    rb = write_runbook(tmp_path / "int.yaml", {"name": "interrupted", "steps": [
        step("long", image, "echo started; sleep 300", syntax="sh"),
        step("next", image, "echo next-ran", syntax="sh"),
        step("cleanup", image, "echo cleaned-up; set_sshexec_variable Clean yes", syntax="sh", timeout=60, **{"if": "always"}),
    ]})  # fmt: skip
    proc = start_run(rb, "--worker", "w2", "--json", env=four)
    wait_for_line(proc, "| started", stderr=True)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)  # hang guard
    assert proc.returncode == 130, err.decode()[-2000:]
    data = json.loads(out)
    assert [(s["step"], s["status"]) for s in data["steps"]] == [("long", "cancelled"), ("next", "skipped"), ("cleanup", "succeeded")]
    assert data["status"] == "cancelled" and data["outputs"]["cleanup.Clean"] == "yes"
    assert "cleaned-up" in err.decode() and "next-ran" not in err.decode()


def test_an_infrastructure_retry_moves_a_target_any_step_to_another_worker(lab_env, w4, tmp_path):
    # w4, then w1, in inventory order: the first attempt goes to w4, whose sshd session is then killed.
    env = environment(lab_env, w4, tmp_path, ["w4", "w1"])
    script = 'echo "started on $SSHEXEC_WORKER"; if [ "$SSHEXEC_WORKER" = w4 ]; then sleep 300; fi; set_sshexec_variable Ran "$SSHEXEC_WORKER"'
    rb = write_runbook(tmp_path / "retry.yaml", {"name": "retry", "steps": [
        step("migrate", lab_env.image_ref("busybox"), script, syntax="sh", retries={"attempts": 2, "delay": 1}),
    ]})  # fmt: skip
    proc = start_run(rb, "--json", env=env)
    wait_for_line(proc, "| started on w4", stderr=True)
    ps = docker("exec", w4.id, "ps", "-eo", "pid=,args=").stdout
    victims = [line.split()[0] for line in ps.splitlines() if "sshd: deploy" in line]
    assert victims
    docker("exec", w4.id, "kill", "-9", *victims)
    out, err = proc.communicate(timeout=120)  # hang guard
    data = json.loads(out)
    assert proc.returncode == 0, err.decode()[-2000:]
    (final,) = data["steps"]
    assert (final["worker"], final["status"], final["attempt"], final["attempts"]) == ("w1", "succeeded", 2, 2)
    assert final["earlier_attempts"][0]["worker"] == "w4" and "connection to w4 lost" in final["earlier_attempts"][0]["message"]
    assert data["outputs"]["migrate.Ran"] == "w1"
    assert "w4/migrate: attempt 1/2 error" in err.decode() and "attempt 2/2 in" in err.decode()
    stored = logs(env, data["run_id"])["steps"]
    assert [(s["worker"], s["attempt"], s["status"]) for s in stored] == [("w4", 1, "error"), ("w1", 2, "succeeded")]
    text = sshexec("logs", data["run_id"], env=env).stdout
    assert "migrate on w4: error attempt 1/2" in text and "migrate on w1: succeeded attempt 2/2" in text
    assert data["leftovers"] == []


def test_retry_failed_reruns_exactly_the_failed_and_skipped_workers(four, lab_env, tmp_path):
    script = tmp_path / "deploy.sh"
    script.write_text(FAIL_ON_W3 + "\n")
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "release", "steps": [
        {**step("deploy", lab_env.image_ref("busybox"), "", syntax="sh", target="each", rolling={"batch": 2}), "script": {"syntax": "sh", "file": "deploy.sh"}},
        step("report", lab_env.image_ref("busybox"), 'echo "w1 has $(get_sshexec_variable "deploy[w1].Version")"', syntax="sh"),
    ]})  # fmt: skip
    first, data = run_json(four, rb)
    assert first.returncode == 1
    assert statuses(data, "deploy") == {"w1": "succeeded", "w3": "failed", "w2": "skipped", "w4": "skipped"}

    script.write_text('echo "fixed on $SSHEXEC_WORKER"; set_sshexec_variable Version "$SSHEXEC_WORKER-2.1"\n')  # the fix; the runbook file is unchanged
    again, retry = run_json(four, "--retry-failed", data["run_id"])
    assert again.returncode == 0, again.stderr[-2000:]
    assert retry["retry_of"] == data["run_id"]
    ran = sorted(s["worker"] for s in retry["steps"] if s["step"] == "deploy" and not s["carried_from"])
    assert ran == ["w2", "w3", "w4"]
    assert sorted(line.split()[-1] for line in again.stderr.splitlines() if "| fixed on" in line) == ["w2", "w3", "w4"]
    (carried,) = [s for s in retry["steps"] if s["carried_from"]]
    assert (carried["worker"], carried["carried_from"], carried["outputs"]) == ("w1", data["run_id"], {"Version": "w1-2.0"})
    assert "w1 has w1-2.0" in again.stderr  # a carried output, read by a later step
    stored = logs(four, retry["run_id"])
    assert stored["retry_of"] == data["run_id"]
    assert [s["carried_from"] for s in stored["steps"] if s["worker"] == "w1" and s["step"] == "deploy"] == [data["run_id"]]
    assert f"deploy on w1: succeeded carried from {data['run_id']}" in sshexec("logs", retry["run_id"], env=four).stdout

    # The runbook file itself changed: exit 2, unless --force.
    rb.write_text(rb.read_text() + "# edited\n")
    refused = sshexec("run", "--retry-failed", data["run_id"], env=four)
    assert refused.returncode == 2 and "which has changed since" in refused.stderr and "--force" in refused.stderr


@pytest.mark.parametrize(
    "extra, target, field, words",
    [
        ({"rolling": {"batch": 0}}, "each", "steps[s].rolling.batch", "not 0"),
        ({"rolling": {"batch": "150%"}}, "each", "steps[s].rolling.batch", "not '150%'"),
        ({"if": "sometimes"}, "each", "steps[s].if", "'sometimes': use one of success, failure, always"),
        ({"retries": {"attempts": 0}}, "any", "steps[s].retries.attempts", "greater than or equal to 1"),
        ({"rolling": {"batch": 2}}, "any", "steps[s].rolling", "rolling: needs target: each"),
    ],
)
def test_bad_values_exit_2_with_file_line_field(four, lab_env, tmp_path, extra, target, field, words):
    rb = write_runbook(tmp_path / "bad.yaml", {"name": "bad", "steps": [step("s", lab_env.image_ref("busybox"), "true", syntax="sh", target=target, **extra)]})
    key = field.rsplit(".", 1)[-1]
    line = next(i for i, text in enumerate(rb.read_text().splitlines(), 1) if text.strip().startswith(key + ":"))
    res = sshexec("run", rb, env=four)
    assert res.returncode == 2
    assert f"{rb}:{line} {field}: " in res.stderr and words in res.stderr
    assert json.loads(sshexec("runs", "--json", env=four).stdout) == []  # nothing ran


def test_retry_failed_with_an_unknown_run_id_exits_2(four):
    res = sshexec("run", "--retry-failed", "19990101-000000-000000", env=four)
    assert res.returncode == 2 and "no run '19990101-000000-000000' in the history" in res.stderr
