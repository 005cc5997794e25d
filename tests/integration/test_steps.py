"""One step in an execution container on a real worker: pull, preflight, run, stream, clean up."""

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from labkit import REPO, push_fresh, sshexec, step, worker_docker, worker_exec, write_runbook

# Both modes: in-process and through the resident agent (tests/conftest.py, both_modes).
pytestmark = pytest.mark.usefixtures("no_leftovers", "both_modes")


def run_json(rb, *args, env=None):
    res = sshexec("run", rb, "--json", *args, env=env)
    data = json.loads(res.stdout) if res.stdout.strip().startswith("{") else None
    return res, data


def test_bash_and_busybox_steps_stream_live(lab_env, tmp_path):
    # "slow" prints a line, then waits for a file the test makes once it has seen that line (bounded).
    wait = 'end=$((SECONDS + 60)); while [ ! -e go ] && [ "$SECONDS" -lt "$end" ]; do sleep 0.1; done'
    rb = write_runbook(tmp_path / "rb.yaml", {
        "name": "live",
        "steps": [
            step("slow", lab_env.image_ref("tools"), f'echo "first from $BASH_VERSION in $PWD"\n{wait}\n[ -e go ] && echo "second after go" || echo "second without go"'),
            step("tiny", lab_env.image_ref("busybox"), 'echo "sh says $(readlink /bin/sh)"; echo err-line >&2', syntax="sh"),
        ],
    })  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "sshexec", "run", str(rb)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    events = []
    lines = []
    for raw in proc.stdout:
        line = raw.decode()
        lines.append(line)
        if "first from 5." in line and "go" not in events:
            # It reached the operator while the step still waits for us: live, not at the step's end.
            events.append("first")
            where = Path(line.rsplit(" in ", 1)[1].strip())
            if where.is_dir():  # gone if the line came only after the step
                (where / "go").touch()
                events.append("go")
        elif "| second" in line:
            events.append(line.split("| ", 1)[1].strip())
    proc.wait(timeout=60)
    out = "".join(lines)
    assert proc.returncode == 0, proc.stderr.read().decode()
    assert events == ["first", "go", "second after go"]
    assert "/slow | first from 5." in out
    assert "/tiny | sh says busybox" in out or "/tiny | sh says /bin/busybox" in out
    assert "/tiny ! err-line" in out
    assert "succeeded" in out and "run id" in out


def test_exit_codes_are_the_scripts(lab_env, tmp_path):
    rb = write_runbook(tmp_path / "rb.yaml", {
        "name": "codes",
        "steps": [
            step("ok", lab_env.image_ref("busybox"), "true", syntax="sh"),
            step("bad", lab_env.image_ref("busybox"), "echo about to fail; exit 7", syntax="sh"),
            step("never", lab_env.image_ref("busybox"), "echo must not run", syntax="sh"),
        ],
    })  # fmt: skip
    res, data = run_json(rb)
    assert res.returncode == 1
    assert [(s["step"], s["status"], s["exit_code"]) for s in data["steps"]] == [("ok", "succeeded", 0), ("bad", "failed", 7), ("never", "skipped", None)]
    assert data["steps"][2]["message"] == "not run: step bad failed"
    assert "exited with code 7" in data["message"]
    assert "must not run" not in res.stderr


def test_entrypoint_image_is_refused_before_any_container_runs(lab_env, tmp_path):
    image = lab_env.image_ref("entrypoint")
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "ep", "steps": [step("s", image, "echo hi", syntax="sh")]})
    since = str(int(time.time()) - 1)
    res, data = run_json(rb)
    assert res.returncode == 3
    (s,) = data["steps"]
    assert s["error"]["error"] == "ImageRefused"
    assert image in s["message"] and 'ENTRYPOINT ["/bin/sh", "-c"]' in s["message"]
    assert "ENTRYPOINT []" in s["error"]["hint"]
    # On the daemon of the worker that refused it (each worker has its own).
    events = worker_docker(lab_env, s["worker"], "events", "--since", since, "--until", str(int(time.time()) + 1),
                           "--filter", f"label=sshexec.run={data['run_id']}", "--filter", "event=create").stdout  # fmt: skip
    assert events.strip() == ""


def test_missing_interpreter_is_a_clear_error(lab_env, tmp_path):
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "py", "steps": [step("s", lab_env.image_ref("busybox"), "print('hi')", syntax="python")]})
    res, data = run_json(rb)
    assert res.returncode == 3
    (s,) = data["steps"]
    assert s["error"]["error"] == "ImageRefused"
    assert "has no python3" in s["message"] and "syntax is python" in s["message"]
    rb = write_runbook(tmp_path / "rb2.yaml", {"name": "bash", "steps": [step("s", lab_env.image_ref("busybox"), "echo hi", syntax="bash")]})
    res, data = run_json(rb)
    assert res.returncode == 3 and "has no bash" in data["steps"][0]["message"]


def test_a_scripts_own_exit_127_is_a_script_failure(lab_env, tmp_path):
    """Only `docker run` failing to start the container is "the image needs /bin/sh"; a script's 127 is its own."""
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "own127", "steps": [
        step("s", lab_env.image_ref("busybox"), "echo 'docker: Error response from daemon: OCI runtime' >&2; docker ps", syntax="sh"),
    ]})  # fmt: skip
    res, data = run_json(rb, "--worker", "w1")
    assert res.returncode == 1, res.stderr[-2000:]
    (s,) = data["steps"]
    assert (s["status"], s["exit_code"], s["error"]) == ("failed", 127, None)
    assert s["message"] == "the script exited with code 127"
    assert "docker: not found" in res.stderr


def test_an_image_without_bin_sh_is_refused_when_the_container_cannot_start(lab_env, tmp_path):
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("hello")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"hi\n"))
    image = f"{lab_env.name}-nosh:{uuid.uuid4().hex[:8]}"
    host = lab_env.daemon("w1").host  # into w1's own daemon: pull never
    subprocess.run(["docker", "--host", host, "import", "-", image], input=buf.getvalue(), check=True, capture_output=True)
    try:
        rb = write_runbook(tmp_path / "rb.yaml", {"name": "nosh", "steps": [step("s", image, "echo hi", syntax="sh", pull="never")]})
        res, data = run_json(rb, "--worker", "w1")
    finally:
        worker_docker(lab_env, "w1", "rmi", "-f", image, check=False)
    assert res.returncode == 3, res.stderr[-2000:]
    (s,) = data["steps"]
    assert s["status"] == "error" and s["error"]["error"] == "ImageRefused"
    assert "the container did not start" in s["message"] and "/bin/sh" in s["message"]
    assert "the image needs /bin/sh" in s["error"]["hint"]


def test_pull_policies(lab_env, tmp_path):
    ref = push_fresh(lab_env)
    try:
        never = write_runbook(tmp_path / "never.yaml", {"name": "n", "steps": [step("s", ref, "true", syntax="sh", pull="never")]})
        res, data = run_json(never)
        assert res.returncode == 3
        assert data["steps"][0]["error"]["error"] == "PullError"
        assert "pull policy is never" in data["steps"][0]["message"]

        always = write_runbook(tmp_path / "always.yaml", {"name": "a", "steps": [
            step("one", ref, "echo pulled", syntax="sh", pull="always", feed="lab"),
            step("two", ref, "echo again", syntax="sh", pull="always", feed="lab"),
        ]})  # fmt: skip
        res, data = run_json(always, "--worker", "w1")
        assert res.returncode == 0, res.stderr
        assert "w1/one | pulled" in res.stderr
        assert worker_docker(lab_env, "w1", "image", "inspect", ref, check=False).returncode == 0
        assert worker_docker(lab_env, "w2", "image", "inspect", ref, check=False).returncode != 0  # w1's daemon only
        # One pull per image per worker per run, however many steps use it.
        assert [s["pulled"] for s in data["steps"]] == [[ref], []]
    finally:
        worker_docker(lab_env, "w1", "rmi", "-f", ref, check=False)


def test_prepull_leaves_no_credentials_or_run_directory(lab_env, tmp_path):
    ref = push_fresh(lab_env)
    try:
        res = sshexec("prepull", ref, "--feed", "lab", "--worker", "w1", "--json")
        assert res.returncode == 0, res.stderr
        (w,) = json.loads(res.stdout)["workers"]
        assert w["ok"] and w["image_id"].startswith("sha256:")
    finally:
        worker_docker(lab_env, "w1", "rmi", "-f", ref, check=False)
    root = lab_env.work_root("w1")
    left = worker_exec(lab_env, "w1", "sh", "-c", f"ls -A {root} {root}/runs 2>/dev/null; find {root} -name 'docker-config*' -o -name '.prepull-*'")
    assert "prepull" not in left and "docker-config" not in left, left


def test_wrong_registry_password_is_a_login_failure(lab_env, tmp_path):
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "login", "steps": [step("s", lab_env.image_ref("busybox"), "true", syntax="sh", pull="always", feed="lab")]})
    env = {**os.environ, "SSHEXEC_LAB_REGISTRY_PASSWORD": "not-the-password"}
    res, data = run_json(rb, env=env)
    assert res.returncode == 3
    (s,) = data["steps"]
    assert s["error"]["error"] == "LoginError"
    assert s["message"].startswith(f"registry login failed for feed lab on {s['worker']}")  # the worker named once
    assert "not-the-password" not in res.stdout + res.stderr


def test_executor_is_uploaded_once_and_reused(lab_env, tmp_path):
    from sshexec.executor import executor_hash

    exe = lab_env.work_root("w1") / "executor" / executor_hash()
    worker_exec(lab_env, "w1", "rm", "-rf", str(exe))
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "exe", "steps": [step("s", lab_env.image_ref("busybox"), "true", syntax="sh")]})
    assert run_json(rb, "--worker", "w1")[0].returncode == 0
    first = worker_exec(lab_env, "w1", "stat", "-c", "%i %Y", f"{exe}/run.sh")
    time.sleep(1.1)
    assert run_json(rb, "--worker", "w1")[0].returncode == 0
    assert worker_exec(lab_env, "w1", "stat", "-c", "%i %Y", f"{exe}/run.sh") == first


def test_root_owned_files_are_cleaned_and_user_worker(lab_env, tmp_path):
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "own", "steps": [
        step("root", lab_env.image_ref("tools"), "id -u; mkdir -p deep/er; touch deep/er/f; chmod 500 deep/er; chmod 000 deep/er/f"),
        step("me", lab_env.image_ref("tools"), "id -u; touch mine", user="worker"),
        step("app", lab_env.image_ref("nonroot"), "id -un; touch from-app"),
    ]})  # fmt: skip
    res, data = run_json(rb, "--worker", "w1")
    assert res.returncode == 0, res.stderr
    assert "w1/root | 0" in res.stderr
    assert "w1/me | 1000" in res.stderr
    assert "w1/app | app" in res.stderr
    # no_leftovers checks that the run directory (with root's files in it) is gone


def test_killed_container_leftovers_are_removed_by_root_cleanup(lab_env, tmp_path):
    """A step that times out leaves root-owned files; the cleanup still removes them."""
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "t", "steps": [
        step("slow", lab_env.image_ref("tools"), "mkdir -p a/b; touch a/b/c; chmod 500 a/b; sleep 60", timeout=2),
    ]})  # fmt: skip
    res, data = run_json(rb, "--worker", "w1")
    assert res.returncode == 124
    assert data["steps"][0]["status"] == "timed-out"
