"""`sshexec lab up/status/down` on a lab instance of its own: up twice is idempotent, down leaves nothing."""

import json
import os

from labkit import docker, sshexec

NAME = os.environ.get("SSHEXEC_TEST_LAB", "sshexec-test") + "-lab2"
PORT = int(os.environ.get("SSHEXEC_TEST_LAB2_PORT", "5102"))


def test_lab_up_twice_then_down_leaves_nothing(lab, tmp_path):
    env = {
        **os.environ,
        "SSHEXEC_LAB_NAME": NAME,
        "SSHEXEC_LAB_HOME": str(tmp_path / "home"),
        "SSHEXEC_LAB_INVENTORY_DIR": str(tmp_path / "inv"),
        "SSHEXEC_LAB_REGISTRY_PORT": str(PORT),
        "SSHEXEC_LAB_WORK": str(lab.work_base.parent / NAME),
    }
    try:
        up = sshexec("lab", "up", "--workers", "1", "--json", env=env, timeout=900)
        assert up.returncode == 0, up.stderr
        st = json.loads(up.stdout)
        assert st["registry"].startswith("up (pid ") and st["registry_address"] == f"127.0.0.1:{PORT}"
        (w,) = st["workers"]
        assert w["running"] and w["port"]
        ids = docker("ps", "-q", "--filter", f"label=sshexec.lab={NAME}").stdout.split()
        state = json.loads((tmp_path / "home" / "state.json").read_text())

        again = sshexec("lab", "up", "--json", env=env, timeout=900)
        assert again.returncode == 0, again.stderr
        assert docker("ps", "-q", "--filter", f"label=sshexec.lab={NAME}").stdout.split() == ids  # nothing recreated
        assert json.loads((tmp_path / "home" / "state.json").read_text())["registry_pid"] == state["registry_pid"]

        inv = tmp_path / "inv" / "lab.yaml"
        check = sshexec("check", "--inventory", inv, "--json", env=env)
        assert check.returncode == 0, check.stdout + check.stderr
        lab_env = dict(line.removeprefix("export ").split("=", 1) for line in sshexec("lab", "env", env=env).stdout.splitlines())
        assert lab_env["SSHEXEC_LAB_REGISTRY_PASSWORD"] and lab_env["SSHEXEC_INVENTORY"] == str(inv)
    finally:
        down = sshexec("lab", "down", "--json", env=env, timeout=300)
    assert down.returncode == 0, down.stderr
    done = json.loads(down.stdout)["done"]
    assert any("stopped the registry" in d for d in done)
    assert docker("ps", "-aq", "--filter", f"label=sshexec.lab={NAME}").stdout.strip() == ""
    assert not os.path.exists(f"/proc/{state['registry_pid']}") or "docker-registry" not in open(f"/proc/{state['registry_pid']}/cmdline").read()
    assert not (tmp_path / "inv" / "lab.yaml").exists()
    assert not (lab.work_base.parent / NAME).exists()
    status = json.loads(sshexec("lab", "status", "--json", env=env).stdout)
    assert status["registry"] == "down" and all(not w["running"] for w in status["workers"])
    # The test lab itself is untouched.
    assert sshexec("check", "--inventory", lab.inventory_path, "--json").returncode == 0


def test_demo_runs_end_to_end_on_the_lab(lab_env, monkeypatch):
    """`sshexec demo` (behind the README's first command), pointed at the test lab."""
    token = "demo-secret-" + os.urandom(6).hex()
    monkeypatch.setenv("SSHEXEC_DEMO_TOKEN", token)
    res = sshexec("demo", timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = res.stdout
    assert "sshexec check" in out and "✓" in out  # the table of healthy workers
    assert "/build | package out/app-1.4.2.tar.gz" in out
    assert "calling the API with token ********" in out
    assert "build.Artifact = app-1.4.2.tar.gz" in out and "succeeded" in out
    assert "w1/deploy |" in out and "w2/deploy |" in out
    assert token not in out + res.stderr
