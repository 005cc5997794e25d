"""The authentication real fleets use, against the lab's real OpenSSH workers: user certificates and ssh-agent.

The lab makes an SSH certificate authority beside its key (inventory/lab/ca);
its workers trust it (TrustedUserCAKeys) and still read authorized_keys, which
holds only the lab key. A fresh key signed by the CA can therefore log in by
its certificate alone.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import yaml
from labkit import docker, new_key, sign_certificate, sshexec, step, write_runbook

pytestmark = pytest.mark.usefixtures("no_leftovers")


def auth_inventory(tmp_path, lab, **defaults) -> dict:
    """The environment of a CLI using lab worker w1 with these `defaults` (identity_file=None: none at all)."""
    from sshexec.config.inventory import load_inventory

    w1 = load_inventory(lab.inventory_path).worker("w1")
    base = {"user": "deploy", "known_hosts": str(lab.known_hosts_path), "connect_timeout": 10}
    base.update(defaults)
    data = {
        "defaults": {k: v for k, v in base.items() if v is not None},
        "workers": [{"name": "w1", "host": "127.0.0.1", "port": w1.port, "pools": ["linux"], "work_root": str(w1.work_root)}],
    }
    inv = tmp_path / "inv.yaml"
    inv.write_text(yaml.safe_dump(data, sort_keys=False))
    return {**os.environ, "SSHEXEC_INVENTORY": str(inv)}


def check(env) -> tuple[subprocess.CompletedProcess, dict]:
    res = sshexec("check", "--json", env=env)
    (w,) = json.loads(res.stdout)["workers"]
    return res, w


def sshd_log(lab, since: str = "") -> str:
    logs = docker("logs", f"{lab.name}-w1")
    return (logs.stdout + logs.stderr)[len(since) :]


def run_step(tmp_path, lab, env, *args) -> subprocess.CompletedProcess:
    rb = write_runbook(tmp_path / "rb.yaml", {"name": "auth", "steps": [step("who", lab.image_ref("busybox"), 'echo "in as $(id -u)"', syntax="sh", user="worker")]})
    return sshexec("run", rb, *args, env=env)


# -- certificates -----------------------------------------------------------------------------


def test_a_certificate_beside_the_key_logs_in_where_the_key_alone_cannot(lab_env, tmp_path):
    key = new_key(tmp_path / "id_cert")  # in no authorized_keys
    env = auth_inventory(tmp_path, lab_env, identity_file=str(key))
    res, w = check(env)
    assert res.returncode == 3 and w["error"]["error"] == "AuthError", res.stdout
    assert "authentication failed for user deploy" in w["error"]["message"]

    sign_certificate(lab_env, key, key_id="deploy-ci")  # id_cert-cert.pub, picked up as OpenSSH does
    before = sshd_log(lab_env)
    res, w = check(env)
    assert res.returncode == 0 and w["healthy"], res.stdout + res.stderr
    run = run_step(tmp_path, lab_env, env)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "w1/who | in as 1000" in run.stdout
    log = sshd_log(lab_env, before)
    assert 'Accepted publickey for deploy' in log and 'ID deploy-ci' in log and "CA ED25519" in log


def test_an_explicit_certificate_file(lab_env, tmp_path):
    key = new_key(tmp_path / "id_explicit")
    (tmp_path / "issued").mkdir()
    cert = sign_certificate(lab_env, key, cert=tmp_path / "issued" / "deploy.cert")
    assert not Path(f"{key}-cert.pub").exists()
    env = auth_inventory(tmp_path, lab_env, identity_file=str(key), certificate_file=str(cert))
    res, w = check(env)
    assert res.returncode == 0 and w["healthy"], res.stdout + res.stderr
    assert run_step(tmp_path, lab_env, env).returncode == 0


@pytest.mark.parametrize(
    "principals, validity, says",
    [
        (("deploy",), "20200101:20200102", "certificate 'sshexec-test' expired at 2020-01-02 00:00:00 UTC"),
        (("alice", "bob"), "-5m:+1h", "certificate 'sshexec-test' is for alice, bob, not for user deploy"),
        (("deploy",), "+1d:+2d", "certificate 'sshexec-test' is not valid before"),
    ],
    ids=["expired", "wrong-principal", "not-yet-valid"],
)
def test_a_certificate_the_worker_refuses_says_why(lab_env, tmp_path, principals, validity, says):
    key = new_key(tmp_path / "id_cert")
    sign_certificate(lab_env, key, principals=principals, validity=validity)
    env = auth_inventory(tmp_path, lab_env, identity_file=str(key))
    before = sshd_log(lab_env)
    res, w = check(env)
    assert res.returncode == 3, res.stdout
    err = w["error"]
    assert err["error"] == "AuthError" and says in err["message"], err
    assert "certificate authority" in err["hint"]
    run = run_step(tmp_path, lab_env, env, "--json")
    assert run.returncode == 3, run.stdout + run.stderr
    (s,) = json.loads(run.stdout)["steps"]
    assert s["error"]["error"] == "AuthError" and says in s["message"], s
    assert "Accepted" not in sshd_log(lab_env, before)


def test_a_certificate_that_does_not_fit_its_key(lab_env, tmp_path):
    key = new_key(tmp_path / "id_mine")
    other = new_key(tmp_path / "id_other")
    (tmp_path / "id_mine-cert.pub").write_bytes(sign_certificate(lab_env, other).read_bytes())
    env = auth_inventory(tmp_path, lab_env, identity_file=str(key))
    res, w = check(env)
    assert res.returncode == 3, res.stdout
    assert f"the certificate {key}-cert.pub does not fit identity_file {key}: it certifies another public key" in w["error"]["message"]
    env = auth_inventory(tmp_path, lab_env, identity_file=str(key), certificate_file=str(tmp_path / "id_other-cert.pub"))
    res, w = check(env)
    assert res.returncode == 3 and "does not fit identity_file" in w["error"]["message"], res.stdout


def test_a_refused_certificate_falls_back_to_the_key_itself(lab_env, tmp_path):
    """As OpenSSH does: an expired certificate beside a key that is in authorized_keys does not lock you out."""
    key = tmp_path / "id_ed25519"
    shutil.copy(lab_env.key_path, key)
    shutil.copy(f"{lab_env.key_path}.pub", f"{key}.pub")
    sign_certificate(lab_env, key, validity="20200101:20200102")
    before = sshd_log(lab_env)
    res, w = check(auth_inventory(tmp_path, lab_env, identity_file=str(key)))
    assert res.returncode == 0 and w["healthy"], res.stdout
    log = sshd_log(lab_env, before)
    assert "expired" in log.lower() and "Accepted publickey for deploy" in log


# -- ssh-agent --------------------------------------------------------------------------------


@pytest.fixture
def agent(tmp_path):
    """A real ssh-agent (stopped by its PID afterwards); yields its socket."""
    sock = tmp_path / "agent.sock"
    out = subprocess.run(["ssh-agent", "-a", str(sock), "-s"], check=True, capture_output=True, text=True, timeout=30).stdout
    pid = int(out.split("SSH_AGENT_PID=")[1].split(";")[0])
    try:
        yield sock
    finally:
        os.kill(pid, signal.SIGTERM)


def no_key_env(tmp_path, lab, **extra) -> dict:
    """No identity_file, and a HOME without ~/.ssh: only the agent can offer a key."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = auth_inventory(tmp_path, lab, identity_file=None)
    env.pop("SSH_AUTH_SOCK", None)
    return {**env, "HOME": str(home), **extra}


def test_keys_come_from_a_real_ssh_agent(lab_env, tmp_path, agent):
    subprocess.run(["ssh-add", "-q", str(lab_env.key_path)], check=True, capture_output=True, timeout=30, env={"SSH_AUTH_SOCK": str(agent), "PATH": os.environ["PATH"]})
    env = no_key_env(tmp_path, lab_env, SSH_AUTH_SOCK=str(agent))
    res, w = check(env)
    assert res.returncode == 0 and w["healthy"], res.stdout + res.stderr
    run = run_step(tmp_path, lab_env, env)
    assert run.returncode == 0 and "w1/who | in as 1000" in run.stdout, run.stdout + run.stderr


def test_an_agent_with_no_key_and_no_agent_at_all_say_so(lab_env, tmp_path, agent):
    res, w = check(no_key_env(tmp_path, lab_env, SSH_AUTH_SOCK=str(agent)))
    assert res.returncode == 3 and w["error"]["error"] == "AuthError"
    assert "no key to log in" in w["error"]["message"] and "the SSH agent holds no key" in w["error"]["message"]
    res, w = check(no_key_env(tmp_path, lab_env))
    assert res.returncode == 3
    assert "there is no SSH agent (SSH_AUTH_SOCK is not set)" in w["error"]["message"]
    assert "ssh-add" in w["error"]["hint"]
