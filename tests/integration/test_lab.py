"""`sshexec lab up/status/down` on a lab instance of its own: up twice is idempotent, down leaves nothing."""

import json
import os
import signal
from pathlib import Path

from labkit import docker, sshexec

NAME = os.environ.get("SSHEXEC_TEST_LAB", "sshexec-test") + "-lab2"
PORT = int(os.environ.get("SSHEXEC_TEST_LAB2_PORT", "5102"))


def _kill9(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def test_lab_up_twice_killed_up_again_then_down_leaves_nothing(lab, tmp_path):
    env = {
        **os.environ,
        "SSHEXEC_LAB_NAME": NAME,
        "SSHEXEC_LAB_HOME": str(tmp_path / "home"),
        "SSHEXEC_LAB_INVENTORY_DIR": str(tmp_path / "inv"),
        "SSHEXEC_LAB_REGISTRY_PORT": str(PORT),
        "SSHEXEC_LAB_WORK": str(lab.work_base.parent / NAME),
    }
    from sshexec.lab.core import Lab

    lab2 = Lab(NAME, home=tmp_path / "home", inventory_dir=tmp_path / "inv", registry_port=PORT, work_base=lab.work_base.parent / NAME)
    inv = tmp_path / "inv" / "lab.yaml"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env_elsewhere = {k: v for k, v in env.items() if k != "SSHEXEC_LAB_INVENTORY_DIR"}
    try:
        up = sshexec("lab", "up", "--workers", "1", "--json", env=env, timeout=900)
        assert up.returncode == 0, up.stderr
        st = json.loads(up.stdout)
        assert st["registry"].startswith("up (pid ") and st["registry_address"] == f"127.0.0.1:{PORT}"
        roles = {w["name"]: w for w in st["workers"]}
        assert [(n, w["role"]) for n, w in roles.items()] == [("w1", "worker"), ("bastion", "bastion"), ("inner1", "internal")]
        assert roles["w1"]["running"] and roles["w1"]["port"] and roles["bastion"]["port"] and roles["inner1"]["port"] is None
        # A daemon of its own for each worker, with its own bridge and subnet; none for the bastion.
        daemons = {d["worker"]: d for d in st["daemons"]}
        assert set(daemons) == {"w1", "inner1"} and not st["shared_daemon"]
        assert all(d["running"] and Path(f"/sys/class/net/{d['bridge']}").exists() for d in daemons.values())
        assert len({d["subnet"] for d in daemons.values()}) == 2
        # Each daemon has the lab's execution images already (pulled from the lab's registry).
        for w in daemons:
            assert docker("image", "inspect", lab2.image_ref("busybox"), host=lab2.daemon(w).host, check=False).returncode == 0
        ids = docker("ps", "-q", "--filter", f"label=sshexec.lab={NAME}").stdout.split()
        state = json.loads((tmp_path / "home" / "state.json").read_text())

        again = sshexec("lab", "up", "--json", env=env, timeout=900)
        assert again.returncode == 0, again.stderr
        assert docker("ps", "-q", "--filter", f"label=sshexec.lab={NAME}").stdout.split() == ids  # nothing recreated
        again_state = json.loads((tmp_path / "home" / "state.json").read_text())
        assert again_state["registry_pid"] == state["registry_pid"] and again_state["daemons"] == state["daemons"]

        # The bastion and the worker behind it are in the inventory, with every host key: check passes.
        check = sshexec("check", "--inventory", inv, "--json", env=env)
        assert check.returncode == 0, check.stdout + check.stderr
        # Each daemon is a host of its own to `docker info`: its own ID, and the worker's name.
        daemon_of = {w["worker"]: (w["daemon_name"], w["daemon_id"]) for w in json.loads(check.stdout)["workers"] if w["docker_required"]}
        assert {w: name for w, (name, _) in daemon_of.items()} == {"w1": "w1", "inner1": "inner1"}
        assert len({i for _, i in daemon_of.values()}) == 2 and all(daemon_of.values())
        # From another directory, without SSHEXEC_LAB_INVENTORY_DIR: the lab knows where its inventory is.
        exports = sshexec("lab", "env", env=env_elsewhere, cwd=elsewhere).stdout
        lab_env = dict(line.removeprefix("export ").split("=", 1) for line in exports.splitlines())
        assert lab_env["SSHEXEC_LAB_REGISTRY_PASSWORD"] and lab_env["SSHEXEC_INVENTORY"] == str(inv)
        status = json.loads(sshexec("lab", "status", "--json", env=env_elsewhere, cwd=elsewhere).stdout)
        assert status["inventory"] == str(inv)
        again_check = sshexec("check", "--json", env={**env_elsewhere, **lab_env}, cwd=elsewhere)
        assert again_check.returncode == 0, again_check.stdout + again_check.stderr

        # What CI sees after a session: every process killed (-9), the containers stopped.
        for w, d in state["daemons"].items():
            containerd = _pid(lab2.daemon(w).exec_root / "containerd" / "containerd.pid")
            _kill9(d["pid"])
            if containerd:
                _kill9(containerd)
        _kill9(state["registry_pid"])
        docker("kill", *ids)
        recovered = sshexec("lab", "up", "--json", env=env, timeout=900)
        assert recovered.returncode == 0, recovered.stderr
        after = json.loads((tmp_path / "home" / "state.json").read_text())
        for w, d in after["daemons"].items():
            assert d["pid"] != state["daemons"][w]["pid"] and d["bridge"] == state["daemons"][w]["bridge"]  # stale bridge reused
        check = sshexec("check", "--inventory", inv, "--json", env=env)
        assert check.returncode == 0, check.stdout + check.stderr
        state = after
    finally:
        down = sshexec("lab", "down", env=env_elsewhere, cwd=elsewhere, timeout=300)
    assert down.returncode == 0, down.stderr
    done = (down.stdout + down.stderr).splitlines()
    assert sum("lab container(s)" in line for line in done) == 1, done  # said once
    assert any("stopped the registry" in d for d in done)
    assert sum("stopped the Docker daemon of" in d for d in done) == 2 and sum("deleted bridge" in d for d in done) == 2
    assert docker("ps", "-aq", "--filter", f"label=sshexec.lab={NAME}").stdout.strip() == ""
    assert docker("network", "ls", "-q", "--filter", f"label=sshexec.lab={NAME}").stdout.strip() == ""
    for pid, prog in [(state["registry_pid"], "docker-registry"), *((d["pid"], "dockerd") for d in state["daemons"].values())]:
        assert not os.path.exists(f"/proc/{pid}") or prog not in open(f"/proc/{pid}/cmdline").read()
    for d in state["daemons"].values():
        assert not Path(f"/sys/class/net/{d['bridge']}").exists()
    assert not (tmp_path / "inv").exists()  # lab.yaml, the key, the CA and known_hosts: all that up wrote
    assert not list(elsewhere.iterdir())
    assert not (lab.work_base.parent / NAME).exists()
    assert not Path("/var/lib", NAME).exists() and not Path("/run/sshexec-lab", NAME).exists()  # daemons' data and sockets
    status = json.loads(sshexec("lab", "status", "--json", env=env).stdout)
    assert status["registry"] == "down" and all(not w["running"] for w in status["workers"]) and status["daemons"] == []
    # The test lab itself is untouched.
    assert sshexec("check", "--inventory", lab.inventory_path, "--json").returncode == 0


def test_demo_runs_from_the_installed_wheel_in_an_empty_directory(lab_env, tmp_path):
    """What a new user does: `pip install 'sshexec[server]'` into a fresh virtualenv, then
    `sshexec --help` and `sshexec demo` from an empty directory (pointed at the test lab)."""
    import shutil
    import subprocess
    import sys

    from labkit import REPO

    src = tmp_path / "src"  # a copy: building in the checkout would leave build/ and egg-info there
    def ignore(where, names):
        top = {".venv", ".git", "build", ".pytest_cache", ".hypothesis", ".import_linter_cache", "inventory", "benchmarks", "tests"} if where == str(REPO) else set()
        return [n for n in names if n in top or n == "__pycache__" or n.endswith(".egg-info")]

    shutil.copytree(REPO, src, symlinks=True, ignore=ignore)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(tmp_path / "dist"), str(src)], check=True, capture_output=True, timeout=600)
    (wheel,) = (tmp_path / "dist").glob("sshexec-*.whl")
    venv = tmp_path / "venv"
    # A virtualenv without a pip of its own, installed into by this pip (--python): the same install, without the
    # seconds of copying pip into it first.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    subprocess.run([*pip, "--python", str(venv / "bin" / "python"), "install", f"{wheel}[server]"], check=True, capture_output=True, timeout=600)
    empty = tmp_path / "empty"
    empty.mkdir()
    program = str(venv / "bin" / "sshexec")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    token = "demo-secret-" + os.urandom(6).hex()
    env["SSHEXEC_DEMO_TOKEN"] = token
    help_ = subprocess.run([program, "--help"], capture_output=True, text=True, cwd=empty, env=env, timeout=60)
    assert help_.returncode == 0 and "Usage: sshexec COMMAND" in help_.stdout and "demo" in help_.stdout
    res = subprocess.run([program, "demo"], capture_output=True, text=True, cwd=empty, env=env, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert str(venv) in res.stdout + res.stderr  # the wheel's runbook, not the checkout's
    assert list(empty.iterdir()) == []
    out = res.stdout
    assert "sshexec check" in out and "✓" in out  # the table of healthy workers
    assert "/build | package out/app-1.4.2.tar.gz" in out
    assert "calling the API with token ********" in out
    assert "build.Artifact = app-1.4.2.tar.gz" in out and "succeeded" in out
    assert "w1/deploy |" in out and "w2/deploy |" in out
    assert "inner1/report | reporting from inner1 behind the lab's bastion" in out  # reached through the bastion
    assert "report.Summary = deployed app-1.4.2.tar.gz" in out
    assert token not in out + res.stderr
