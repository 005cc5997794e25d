"""`sshexec check` and `sshexec trust` against real worker containers made to fail in each way."""

import json
import socket
import time

import paramiko
import pytest

from labkit import PortRecorder, extra_worker, free_port, inventory_file, sshexec

# Both modes: in-process and through the resident agent (tests/conftest.py, both_modes).
pytestmark = pytest.mark.usefixtures("both_modes")


def check(inv, *extra):
    res = sshexec("check", "--inventory", inv, "--json", *extra)
    return res, json.loads(res.stdout) if res.stdout.strip().startswith("{") else None


def test_healthy_lab_workers(lab_env):
    res, data = check(lab_env.inventory_path)
    assert res.returncode == 0, res.stderr
    assert data["healthy"] is True
    by_name = {w["worker"]: w for w in data["workers"]}
    assert {"w1", "w2", "w3", "bastion", "inner1"} <= set(by_name)
    for name, w in by_name.items():
        assert (w["ssh"], w["host_key"]) == (True, True)
        if name == "bastion":  # a jump host (in no pool): SSH and its host key only
            assert w["docker_required"] is False and (w["docker_cli"], w["daemon"], w["version"], w["free_bytes"]) == (None, None, None, None)
            continue
        assert (w["docker_cli"], w["daemon"], w["permission"], w["docker_required"]) == (True, True, True, True)
        assert w["version"] and w["platform"].startswith("linux/")
        assert w["free_bytes"] > 0 and w["work_root"].startswith("/")
        # Each worker's own daemon answered, and its disk is reported where that daemon keeps its data.
        assert w["docker_root"] == str(lab_env.daemon(name).data_root) and w["docker_free_bytes"] > 0
        assert w["daemon_id"] and w["daemon_name"]
    assert by_name["w1"]["endpoint"] == "unix:///var/run/docker.sock"
    assert by_name["inner1"]["endpoint"] == "unix:///run/sx/docker.sock"  # docker_host
    table = sshexec("check", "--inventory", lab_env.inventory_path)  # compact: a line per worker
    assert table.returncode == 0 and "w1" in table.stdout and "bastion: a jump host (in no pool)" in table.stdout
    assert by_name["w1"]["version"].split("+")[0] in table.stdout and "unix:///" not in table.stdout
    wide = sshexec("check", "--inventory", lab_env.inventory_path, "--wide")  # every check, and which daemon answered
    assert wide.returncode == 0 and "✓" in wide.stdout
    assert "unix:///run/sx/docker.sock" in wide.stdout and "bastion: a jump host (in no pool)" in wide.stdout


def test_pool_and_worker_selection(lab_env):
    res, data = check(lab_env.inventory_path, "--worker", "w2")
    assert res.returncode == 0 and [w["worker"] for w in data["workers"]] == ["w2"]
    res = sshexec("check", "--inventory", lab_env.inventory_path, "--pool", "nope")
    assert res.returncode == 2 and "pool 'nope'" in res.stderr


def one_failure(data):
    (w,) = data["workers"]
    assert w["healthy"] is False
    return w, w["error"]


def test_unreachable_port(lab, tmp_path):
    inv = inventory_file(tmp_path, lab, [{"name": "gone", "host": "127.0.0.1", "port": free_port(), "pools": ["linux"]}])
    res, data = check(inv)
    assert res.returncode == 3
    w, err = one_failure(data)
    assert err["error"] == "UnreachableError" and w["ssh"] is False
    assert err["message"].startswith("gone: cannot reach 127.0.0.1:")
    assert "check that the worker is up" in err["hint"]


def test_wrong_key(lab, tmp_path):
    other = tmp_path / "other_key"
    paramiko.RSAKey.generate(2048).write_private_key_file(str(other))
    with extra_worker(lab) as xw:
        inv = inventory_file(tmp_path, lab, [{"name": xw.name, "host": "127.0.0.1", "port": xw.port, "identity_file": str(other)}], known_hosts=xw.host_keys())
        res, data = check(inv)
    assert res.returncode == 3
    w, err = one_failure(data)
    assert err["error"] == "AuthError"
    assert err["message"].startswith(f"{xw.name}: authentication failed for user deploy")
    assert "authorized_keys" in err["hint"]


def test_unknown_host_key(lab, tmp_path):
    with extra_worker(lab) as xw:
        inv = inventory_file(tmp_path, lab, [{"name": xw.name, "host": "127.0.0.1", "port": xw.port}], known_hosts="")
        res, data = check(inv)
        # Nothing was written to known_hosts by check.
        assert (tmp_path / "inv.yaml.known_hosts").read_text() == ""
        fp = sshexec("trust", "--inventory", inv, "--worker", xw.name, "--json", "--yes")
    assert res.returncode == 3
    w, err = one_failure(data)
    assert err["error"] == "UnknownHostKey" and w["host_key"] is False
    assert "SHA256:" in err["message"] and "refusing" in err["message"]
    assert f"sshexec trust --worker {xw.name}" in err["hint"]
    # The fingerprint shown is the one trust would add.
    assert json.loads(fp.stdout)["fingerprint"] in err["message"]


def test_trust_then_changed_host_key_is_refused(lab, tmp_path):
    with extra_worker(lab, env={"SSHEXEC_REGEN_HOSTKEYS": "1"}) as xw:
        inv = inventory_file(tmp_path, lab, [{"name": xw.name, "host": "127.0.0.1", "port": xw.port}], known_hosts="")
        # Without --yes and without a terminal, trust adds nothing.
        res = sshexec("trust", "--inventory", inv, "--worker", xw.name)
        assert res.returncode == 2 and (tmp_path / "inv.yaml.known_hosts").read_text() == ""
        res = sshexec("trust", "--inventory", inv, "--worker", xw.name, "--yes")
        assert res.returncode == 0, res.stderr
        assert "SHA256:" in res.stderr and "added to" in res.stderr
        assert check(inv)[0].returncode == 0
        assert "already" in sshexec("trust", "--inventory", inv, "--worker", xw.name, "--yes").stderr

        # The worker is "reinstalled": new host keys at the same address.
        from labkit import docker
        from sshexec.lab.core import wait_for_ssh

        kh = tmp_path / "inv.yaml.known_hosts"
        old_port = xw.port
        docker("restart", xw.id)
        xw.port = int(xw.container.get_exposed_port(22))
        wait_for_ssh(xw.port, xw.id)
        known = kh.read_text().replace(f"[127.0.0.1]:{old_port} ", f"[127.0.0.1]:{xw.port} ")
        inv = inventory_file(tmp_path, lab, [{"name": xw.name, "host": "127.0.0.1", "port": xw.port}], known_hosts=known)
        res, data = check(inv)
        assert res.returncode == 3
        w, err = one_failure(data)
        assert err["error"] == "ChangedHostKey" and w["host_key"] is False
        assert "HOST KEY CHANGED" in err["message"] and err["message"].count("SHA256:") == 2
        assert "--replace" in err["hint"]
        assert kh.read_text() == known  # never replaced silently
        refused = sshexec("trust", "--inventory", inv, "--worker", xw.name, "--yes")
        assert refused.returncode == 3 and "different key" in refused.stderr
        assert kh.read_text() == known
        replaced = sshexec("trust", "--inventory", inv, "--worker", xw.name, "--yes", "--replace")
        assert replaced.returncode == 0, replaced.stderr
        assert kh.read_text() != known
        assert check(inv)[0].returncode == 0


def test_docker_cli_missing(lab, tmp_path):
    with extra_worker(lab, env={"SSHEXEC_WORKER_NO_DOCKER": "1"}) as xw:
        inv = inventory_file(tmp_path, lab, [{"name": xw.name, "host": "127.0.0.1", "port": xw.port, "pools": ["linux"]}], known_hosts=xw.host_keys())
        res, data = check(inv)
    assert res.returncode == 3
    w, err = one_failure(data)
    assert err["error"] == "DockerMissing" and w["docker_cli"] is False and w["ssh"] is True
    assert err["message"].startswith(f"{xw.name}: `docker` was not found")
    assert "install Docker" in err["hint"]


def test_daemon_not_reachable(lab, tmp_path):
    with extra_worker(lab, docker_socket=False) as xw:
        inv = inventory_file(tmp_path, lab, [{"name": xw.name, "host": "127.0.0.1", "port": xw.port, "pools": ["linux"]}], known_hosts=xw.host_keys())
        res, data = check(inv)
    assert res.returncode == 3
    w, err = one_failure(data)
    assert err["error"] == "DaemonDown" and w["daemon"] is False and w["docker_cli"] is True
    assert "Docker daemon is not reachable" in err["message"] and "start it" in err["hint"]


def test_user_not_in_docker_group_and_sudo_fix(lab, tmp_path):
    with extra_worker(lab) as xw:
        kh = xw.host_keys()
        inv = inventory_file(tmp_path, lab, [{"name": xw.name, "host": "127.0.0.1", "port": xw.port, "user": "nodocker", "pools": ["linux"]}], known_hosts=kh)
        res, data = check(inv)
        # The fix the hint gives works: docker through sudo -n.
        fixed = inventory_file(tmp_path, lab, [{"name": xw.name, "host": "127.0.0.1", "port": xw.port, "user": "nodocker", "pools": ["linux"], "docker": "sudo -n /usr/bin/docker"}], known_hosts=kh, name="fixed.yaml")
        ok, _ = check(fixed)
    assert res.returncode == 3
    w, err = one_failure(data)
    assert err["error"] == "DockerPermission" and w["permission"] is False
    assert "may not use the Docker daemon" in err["message"] and "docker group" in err["hint"]
    assert ok.returncode == 0, ok.stdout


def test_broken_inventory_exits_2_and_contacts_nothing(lab, tmp_path):
    """The inventory's one worker points at a port that records every connection, all along."""
    rec = PortRecorder()
    try:
        inv = tmp_path / "bad.yaml"
        inv.write_text(f"workers:\n  - name: w1\n    host: 127.0.0.1\n    port: {rec.port}\n    colour: blue\n")
        res = sshexec("check", "--inventory", inv)
        # The recorder was listening the whole time: a connection now is seen (the check can fail).
        socket.create_connection(("127.0.0.1", rec.port), timeout=5).close()
        end = time.monotonic() + 10
        while not rec.accepted and time.monotonic() < end:
            time.sleep(0.05)
    finally:
        rec.close()
    assert len(rec.accepted) == 1, rec.accepted  # ours alone: sshexec never connected
    assert res.returncode == 2
    assert f"{inv}:5 workers[w1].colour: unknown key" in res.stderr
