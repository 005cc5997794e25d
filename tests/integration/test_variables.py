"""What a step says back: variables, secrets, output variables, artifacts, fail_step, fan-out, history."""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from labkit import REPO, extra_worker, free_port, inventory_file, sshexec, step, stored_artifact, write_runbook

pytestmark = pytest.mark.usefixtures("no_leftovers")

TOKEN = "tok-" + uuid.uuid4().hex  # the sensitive value of these tests


def run_json(rb, *args, env=None):
    res = sshexec("run", rb, "--json", *args, env=env)
    assert res.stdout.strip().startswith("{"), res.stderr
    return res, json.loads(res.stdout)


def test_three_steps_bash_sh_python_with_outputs_and_fail_step(lab_env, tmp_path):
    rb = write_runbook(tmp_path / "rb.yaml", {
        "name": "three",
        "variables": {"GREETING": "hi"},
        "steps": [
            step("one", lab_env.image_ref("tools"), 'set_sshexec_variable Answer "$((6 * 7))"; echo "$GREETING from bash $SSHEXEC_WORKER/$SSHEXEC_STEP"'),
            step("two", lab_env.image_ref("busybox"), 'a=$(get_sshexec_variable one.Answer); echo "two got $a"; set_sshexec_variable Doubled "$((a * 2))"', syntax="sh"),
            step("three", lab_env.image_ref("tools"), 'import sshexec_helpers as sx\nprint("three sees", sx.get_variable("two.Doubled"))\nsx.fail_step("why")\nprint("not reached")', syntax="python"),
        ],
    })  # fmt: skip
    res, data = run_json(rb)
    assert res.returncode == 1
    assert [(s["step"], s["status"]) for s in data["steps"]] == [("one", "succeeded"), ("two", "succeeded"), ("three", "failed")]
    assert data["steps"][2]["message"] == "why"
    assert "three on" in data["message"] and "why" in data["message"]
    assert data["outputs"]["one.Answer"] == "42" and data["outputs"]["two.Doubled"] == "84"
    assert "hi from bash " in res.stderr and "two got 42" in res.stderr and "three sees 84" in res.stderr
    assert "not reached" not in res.stderr
    table = sshexec("run", rb)
    assert table.returncode == 1 and "why" in table.stdout and "failed" in table.stdout
    logs = sshexec("logs", data["run_id"], "--json")
    hist = json.loads(logs.stdout)
    assert hist["status"] == "failed" and hist["exit_code"] == 1
    assert [(s["step"], s["status"]) for s in hist["steps"]] == [("one", "succeeded"), ("two", "succeeded"), ("three", "failed")]
    assert hist["steps"][0]["outputs"] == {"Answer": "42"}
    assert "three sees 84" in hist["log"]


SECRET_SCRIPT = r'''
echo "plain: $API_TOKEN"
echo "twice: $API_TOKEN and $API_TOKEN, mid-line:x${API_TOKEN}y"
printf '%s' "${API_TOKEN:0:7}"; sleep 0.5; printf '%s\n' "${API_TOKEN:7}"
echo "stderr: $API_TOKEN" >&2
set_sshexec_variable Leaky "prefix-$API_TOKEN"
set_sshexec_variable Hidden "other-$(printf %s "$API_TOKEN" | sha256sum | cut -c1-16)" --sensitive
echo "hidden: $(get_sshexec_variable Hidden)"
set -x
curl_stand_in() { :; }
curl_stand_in --header "Authorization: Bearer $API_TOKEN"
set +x
fail_step "failed with $API_TOKEN in the message"
'''


def test_secrets_never_appear_anywhere(lab_env, tmp_path, monkeypatch):
    monkeypatch.setenv("MY_TOKEN", TOKEN)
    import hashlib

    hidden = "other-" + hashlib.sha256(TOKEN.encode()).hexdigest()[:16]
    rb = write_runbook(tmp_path / "rb.yaml", {
        "name": "secrets",
        "sensitive_variables": {"API_TOKEN": {"env": "MY_TOKEN"}},
        "steps": [step("leak", lab_env.image_ref("tools"), SECRET_SCRIPT)],
    })  # fmt: skip
    term = sshexec("run", rb)
    res, data = run_json(rb)
    assert term.returncode == 1 and res.returncode == 1
    shown = term.stdout + term.stderr + res.stdout + res.stderr
    assert "plain: ********" in shown and "mid-line:x********y" in shown and "hidden: ********" in shown
    assert "hidden: other-" not in shown
    assert "Bearer ********" in shown  # set -x echo
    assert data["outputs"]["leak.Leaky"] == "prefix-********"
    assert data["outputs"]["leak.Hidden"] == "********"
    assert data["steps"][0]["message"] == "failed with ******** in the message"
    for rid in (data["run_id"],):
        shown += sshexec("logs", rid).stdout + sshexec("logs", rid, "--json").stdout
    shown += sshexec("runs", "--json").stdout
    assert TOKEN not in shown and hidden not in shown
    # Every byte the history keeps: the database (and its WAL), logs, artifacts.
    home = Path(os.environ["SSHEXEC_HOME"])
    files = [p for p in home.rglob("*") if p.is_file()]
    assert any(p.name == "history.db" for p in files)
    for p in files:
        data_ = p.read_bytes()
        assert TOKEN.encode() not in data_ and hidden.encode() not in data_, p


HOSTILE = {
    "QUOTES": "it's \"quoted\" and 'single'",
    "SUBST": "$(touch /tmp/pwned-MARK) `touch /tmp/pwned-MARK` ${HOME}",
    "NEWLINES": "line1\nline2\n\n",
    "UNICODE": "héllo wörld ✓ 日本",
    "EMPTY": "",
    "PERCENT": "%s %d %n \\n \\0 -v --",
    "dotted.name": "not exported but readable",
}


def test_hostile_values_arrive_byte_for_byte(lab_env, tmp_path):
    mark = uuid.uuid4().hex[:8]
    values = {k: v.replace("MARK", mark) for k, v in HOSTILE.items()}
    script = "\n".join(
        [f'printf "%s=" "{k}"; get_sshexec_variable "{k}" | od -An -v -tx1 | tr -d " \\n"; echo' for k in values]
        + [f'printf "env:%s=" "{k}"; printf "%s" "${k}" | od -An -v -tx1 | tr -d " \\n"; echo' for k in values if k.isidentifier()]
        + [f'ls /tmp/pwned-{mark} 2>/dev/null && echo PWNED-IN-CONTAINER || true']
    )
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "hostile", "variables": {**values, "QUOTES": "overridden by --var"}, "steps": [step("s", lab_env.image_ref("busybox"), script, syntax="sh")]})
    res, data = run_json(rb, "--var", f"QUOTES={values['QUOTES']}", "--worker", "w1")
    assert res.returncode == 0, res.stderr
    got = {}
    for line in res.stderr.splitlines():
        body = line.split(" | ", 1)[1] if " | " in line else ""
        if "=" in body:
            k, _, hexed = body.partition("=")
            got[k] = bytes.fromhex(hexed).decode()
    for k, v in values.items():
        assert got[k] == v, k
        if k.isidentifier():
            assert got["env:" + k] == v, k
    assert "PWNED" not in res.stderr
    assert not Path(f"/tmp/pwned-{mark}").exists()
    from labkit import worker_exec

    assert worker_exec(lab_env, "w1", "sh", "-c", f"ls /tmp/pwned-{mark} 2>/dev/null || echo none").strip() == "none"


def test_artifacts_collected_and_escapes_refused(lab_env, tmp_path):
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "arts", "steps": [step("make", lab_env.image_ref("tools"), r'''
        mkdir -p out; echo "report body" > out/report.txt
        new_sshexec_artifact out/report.txt
        new_sshexec_artifact out/report.txt renamed.txt
    ''')]})  # fmt: skip
    res, data = run_json(rb, "--worker", "w1")
    assert res.returncode == 0, res.stderr
    arts = {a["name"]: a for a in data["steps"][0]["artifacts"]}
    assert set(arts) == {"report.txt", "renamed.txt"}
    for a in arts.values():
        assert stored_artifact(data["run_id"], "w1", a["name"]) == b"report body\n"

    outside = tmp_path / "outside"
    outside.mkdir()
    evil = write_runbook(tmp_path / "evil.yaml", {"name": "evil", "steps": [step("evil", lab_env.image_ref("tools"), rf'''
        echo secret-ish > inside.txt
        ln -s /etc/passwd link
        new_sshexec_artifact /etc/passwd
        new_sshexec_artifact ../../../../../../../../../../../../etc/hostname
        new_sshexec_artifact inside.txt ../../../../../..{outside}/pwned
        new_sshexec_artifact link
        new_sshexec_artifact inside.txt ok.txt
    ''')]})  # fmt: skip
    res, data = run_json(evil, "--worker", "w1")
    assert res.returncode == 1
    (s,) = data["steps"]
    assert s["status"] == "failed"
    assert [a["name"] for a in s["artifacts"]] == ["ok.txt"]
    msg = s["message"]
    assert "'passwd': /etc/passwd is outside the step's working directory; refused" in msg
    assert "'hostname'" in msg and "refused" in msg
    assert "is not a plain file name" in msg
    assert "'link'" in msg and "leads outside" in msg
    assert list(outside.iterdir()) == []
    from sshexec.store.history import History

    assert [a["name"] for a in History().artifacts(data["run_id"])] == ["ok.txt"]  # the history keeps the one it took, nothing else


def test_target_each_with_one_failing_worker(lab_env, tmp_path):
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "each", "steps": [
        step("fan", lab_env.image_ref("busybox"), '''
            echo "on $SSHEXEC_WORKER"
            set_sshexec_variable Who "$SSHEXEC_WORKER"
            [ "$SSHEXEC_WORKER" != w2 ] || { echo "w2 is broken" >&2; exit 5; }
        ''', syntax="sh", target="each"),
    ]})  # fmt: skip
    res, data = run_json(rb)
    assert res.returncode == 1
    by_worker = {s["worker"]: s for s in data["steps"]}
    assert {"w1", "w2", "w3"} <= set(by_worker)
    assert by_worker["w2"]["status"] == "failed" and by_worker["w2"]["exit_code"] == 5
    assert all(by_worker[w]["status"] == "succeeded" for w in by_worker if w != "w2")
    assert "fan on w2" in data["message"] and "code 5" in data["message"]
    assert data["outputs"]["fan[w1].Who"] == "w1" and data["outputs"]["fan[w3].Who"] == "w3"
    for w in by_worker:
        assert f"{w}/fan | on {w}" in res.stderr
    table = sshexec("run", rb)
    assert "w2" in table.stdout and "exited with code 5" in table.stdout


def test_any_skips_an_unreachable_worker_with_a_warning(lab_env, tmp_path):
    from sshexec.config.inventory import load_inventory

    inv = load_inventory(lab_env.inventory_path)
    w1 = inv.worker("w1")
    path = inventory_file(tmp_path, lab_env, [
        {"name": "dead", "host": "127.0.0.1", "port": free_port(), "pools": ["mixed"]},
        {"name": "w1", "host": "127.0.0.1", "port": w1.port, "pools": ["mixed"], "work_root": w1.work_root},
    ], known_hosts=w1.known_hosts.read_text())  # fmt: skip
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "any", "steps": [step("s", lab_env.image_ref("busybox"), "echo ran on $SSHEXEC_WORKER", syntax="sh", pool="mixed")]})
    env = {**os.environ, "SSHEXEC_ANY_ORDER": "inventory", "SSHEXEC_INVENTORY": str(path)}
    res = sshexec("run", rb, env=env)
    assert res.returncode == 0, res.stderr
    assert "w1/s | ran on w1" in res.stdout
    assert "skipping dead: dead: cannot reach 127.0.0.1" in res.stderr


def test_any_skips_a_worker_whose_user_may_not_use_docker(lab_env, tmp_path):
    """A Docker socket "permission denied" during a pull is DockerPermission, not a registry refusal."""
    from sshexec.config.inventory import load_inventory

    w1 = load_inventory(lab_env.inventory_path).worker("w1")
    with extra_worker(lab_env) as xw:
        known = xw.host_keys() + w1.known_hosts.read_text()
        path = inventory_file(tmp_path, lab_env, [
            {"name": "nosock", "host": "127.0.0.1", "port": xw.port, "user": "nodocker", "pools": ["mixed"]},
            {"name": "w1", "host": "127.0.0.1", "port": w1.port, "pools": ["mixed"], "work_root": w1.work_root},
        ], known_hosts=known)  # fmt: skip
        env = {**os.environ, "SSHEXEC_ANY_ORDER": "inventory", "SSHEXEC_INVENTORY": str(path)}
        rb = write_runbook(tmp_path / "rb.yaml", {"name": "perm", "steps": [
            step("s", lab_env.image_ref("busybox"), "echo ran on $SSHEXEC_WORKER", syntax="sh", pool="mixed", pull="always", feed="lab"),
        ]})  # fmt: skip
        res = sshexec("run", rb, env=env)
        assert res.returncode == 0, (res.stdout, res.stderr)
        assert "w1/s | ran on w1" in res.stdout
        assert "skipping nosock: nosock: user may not use the Docker daemon" in res.stderr
        # prepull with a feed (docker login first) and without one (docker pull alone).
        for feed in (["--feed", "lab"], []):
            pre = sshexec("prepull", lab_env.image_ref("busybox"), "--worker", "nosock", "--json", *feed, env=env)
            assert pre.returncode == 3
            (w,) = json.loads(pre.stdout)["workers"]
            assert w["error"]["error"] == "DockerPermission", (feed, w)
            assert "docker group" in w["error"]["hint"]


@pytest.fixture
def bash_as_sh_image(lab):
    """The tools image with /bin/sh linked to bash (bash's POSIX mode, as on some distributions)."""
    image = f"{lab.name}-bash-sh:{uuid.uuid4().hex[:8]}"
    dockerfile = f"FROM {lab.image_ref('tools')}\nRUN ln -sf bash /bin/sh\n"
    subprocess.run(["docker", "build", "-q", "-t", image, "-"], input=dockerfile.encode(), check=True, capture_output=True, env={**os.environ, "DOCKER_BUILDKIT": "0"}, timeout=300)
    # Into w1's own daemon, where the test runs it (pull never).
    w1 = lab.daemon("w1").host
    subprocess.run(f"docker save {image} | docker --host {w1} load -q", shell=True, check=True, capture_output=True, timeout=300)
    yield image
    subprocess.run(["docker", "rmi", "-f", image], capture_output=True)
    subprocess.run(["docker", "--host", w1, "rmi", "-f", image], capture_output=True)


def test_variables_named_like_read_only_shell_variables(lab_env, tmp_path, bash_as_sh_image):
    """UID, EUID, PPID... are read-only in bash: under any /bin/sh the executor skips them and runs the step."""
    variables = {"UID": "u-1", "EUID": "e-2", "PPID": "p-3", "BASH_VERSINFO": "b-4", "AFTER": "exported"}
    script = 'readlink /bin/sh; for n in UID EUID PPID BASH_VERSINFO; do echo "get:$n=$(get_sshexec_variable $n)"; done; echo "env:AFTER=$AFTER"'
    images = [(lab_env.image_ref("busybox"), "sh"), (lab_env.image_ref("tools"), "sh"), (lab_env.image_ref("tools"), "bash"), (bash_as_sh_image, "sh"), (bash_as_sh_image, "bash")]
    steps = [step(f"s{i}", image, script, syntax=syntax, pull="never") for i, (image, syntax) in enumerate(images)]
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "readonly", "variables": variables, "steps": steps})
    res, data = run_json(rb, "--worker", "w1")
    assert res.returncode == 0, res.stderr[-3000:]
    assert [s["status"] for s in data["steps"]] == ["succeeded"] * len(images)
    for i in range(len(images)):
        for name in ("UID", "EUID", "PPID", "BASH_VERSINFO"):
            assert f"w1/s{i} | get:{name}={variables[name]}" in res.stderr
        assert f"w1/s{i} | env:AFTER=exported" in res.stderr
    assert "w1/s3 | bash" in res.stderr  # the image's /bin/sh really is bash
    assert "w1/s3 ! sshexec: not exported, read-only in this shell: UID EUID PPID BASH_VERSINFO" in res.stderr


def test_two_runs_at_once_are_both_recorded(lab_env, tmp_path):
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "pair", "steps": [
        step("a", lab_env.image_ref("busybox"), "echo a-$SSHEXEC_RUN_ID; sleep 1", syntax="sh", target="each"),
        step("b", lab_env.image_ref("busybox"), "echo b-$SSHEXEC_RUN_ID", syntax="sh"),
    ]})  # fmt: skip
    procs = [subprocess.Popen([sys.executable, "-m", "sshexec", "run", str(rb), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO) for _ in range(2)]
    outs = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    runs = {r["id"]: r for r in json.loads(sshexec("runs", "--json").stdout)}
    for o in outs:
        rec = runs[o["run_id"]]
        assert rec["status"] == "succeeded" and rec["exit_code"] == 0 and rec["finished"]
        hist = json.loads(sshexec("logs", o["run_id"], "--json").stdout)
        assert len(hist["steps"]) == len(o["steps"]) >= 4
        assert f"a-{o['run_id']}" in hist["log"] and f"b-{o['run_id']}" in hist["log"]
