"""Workers behind a real OpenSSH bastion: every hop's host key verified, one shared connection to the bastion."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from labkit import PortRecorder, jump_lab, sshexec, step, write_runbook

pytestmark = pytest.mark.usefixtures("no_leftovers")


def jump_inventory(tmp_path, lab, jl, known_hosts: str, *, via_ssh_config: bool = False) -> tuple:
    kh = tmp_path / "known_hosts"
    kh.write_text(known_hosts)
    workers = [{"name": "bastion", "host": "127.0.0.1", "port": jl.bastion_port}]
    for alias, container in jl.inner.items():
        work = str(lab.work_base / container)
        if via_ssh_config:
            workers.append({"name": alias, "host": f"{alias}-behind", "pools": ["inner"], "work_root": work})
        else:
            workers.append({"name": alias, "host": alias, "port": 22, "pools": ["inner"], "work_root": work, "jump": "bastion"})
    data = {
        "defaults": {"user": "deploy", "identity_file": str(lab.key_path), "known_hosts": str(kh), "connect_timeout": 10},
        "workers": workers,
        "feeds": [{"name": "lab", "registry": lab.registry_address, "username": "sshexec", "password_env": "SSHEXEC_LAB_REGISTRY_PASSWORD"}],
    }
    inv = tmp_path / "inv.yaml"
    inv.write_text(yaml.safe_dump(data, sort_keys=False))
    env = {**os.environ, "SSHEXEC_INVENTORY": str(inv)}
    if via_ssh_config:
        cfg = tmp_path / "ssh_config"
        cfg.write_text("".join(f"Host {alias}-behind\n  HostName {alias}\n  ProxyJump deploy@127.0.0.1:{jl.bastion_port}\n" for alias in jl.inner))
        env["SSHEXEC_SSH_CONFIG"] = str(cfg)
    return inv, kh, env


def check(env, worker):
    res = sshexec("check", "--worker", worker, "--json", env=env)
    return res, json.loads(res.stdout) if res.stdout.strip().startswith("{") else None


def test_a_worker_behind_a_bastion_runs_steps(lab_env, tmp_path):
    with jump_lab(lab_env) as jl:
        inv, kh, env = jump_inventory(tmp_path, lab_env, jl, jl.bastion_keys() + jl.inner_keys())
        res, data = check(env, "inner1")
        assert res.returncode == 0, res.stdout + res.stderr
        rb = write_runbook(tmp_path / "rb.yaml", {"name": "behind", "steps": [step("s", lab_env.image_ref("busybox"), 'echo "on $(hostname)"', syntax="sh", pool="inner", feed="lab")]})
        run = sshexec("run", rb, env=env)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "inner1/s | on " in run.stdout


@pytest.mark.parametrize("how", ["inventory", "ssh_config"])
def test_a_bastion_with_an_unknown_key_is_refused(lab_env, tmp_path, how):
    with jump_lab(lab_env) as jl:
        inv, kh, env = jump_inventory(tmp_path, lab_env, jl, jl.inner_keys(), via_ssh_config=how == "ssh_config")
        res, data = check(env, "inner1")
        assert res.returncode == 3, res.stdout + res.stderr
        (w,) = data["workers"]
        err = w["error"]
        assert err["error"] == "UnknownHostKey" and err["hop"] is not None
        assert "jump host" in err["message"] and "refusing to connect" in err["message"]
        assert f"[127.0.0.1]:{jl.bastion_port}" in err["message"]
        assert "sshexec trust --worker inner1" in err["hint"]
        rb = write_runbook(tmp_path / "rb.yaml", {"name": "behind", "steps": [step("s", lab_env.image_ref("busybox"), "echo must-not-run", syntax="sh", pool="inner")]})
        run = sshexec("run", rb, env=env)
        assert run.returncode == 3 and "must-not-run" not in run.stdout
        assert jl.accepted_logins() == 0  # no key was ever offered to the unverified bastion
        assert kh.read_text() == jl.inner_keys()


@pytest.mark.parametrize("how", ["inventory", "ssh_config"])
def test_a_bastion_with_a_changed_key_is_refused(lab_env, tmp_path, how):
    with jump_lab(lab_env) as jl:
        wrong = jl.bastion_keys()
        import paramiko

        fake = paramiko.ECDSAKey.generate()
        wrong = "".join(f"{line.split()[0]} {fake.get_name()} {fake.get_base64()}\n" for line in wrong.splitlines()[:1])
        inv, kh, env = jump_inventory(tmp_path, lab_env, jl, wrong + jl.inner_keys(), via_ssh_config=how == "ssh_config")
        res, data = check(env, "inner1")
        assert res.returncode == 3
        err = data["workers"][0]["error"]
        assert err["error"] == "ChangedHostKey" and "man-in-the-middle" in err["message"] and "jump host" in err["message"]
        assert jl.accepted_logins() == 0


def test_a_worker_with_an_unknown_then_a_changed_key_behind_a_trusted_bastion_is_refused(lab_env, tmp_path):
    """The bastion's key is known and it lets sshexec through; the worker's own key is checked all the
    same, through the bastion, before anything is offered to the worker: its sshd accepts no login."""
    import paramiko

    with jump_lab(lab_env) as jl:
        inner = jl.inner["inner1"]
        rb = write_runbook(tmp_path / "rb.yaml", {"name": "behind", "steps": [step("s", lab_env.image_ref("busybox"), "echo must-not-run", syntax="sh", pool="inner")]})
        fake = paramiko.ECDSAKey.generate()
        for case, known in (("unknown", jl.bastion_keys()), ("changed", jl.bastion_keys() + f"inner1 {fake.get_name()} {fake.get_base64()}\n")):
            inv, kh, env = jump_inventory(tmp_path, lab_env, jl, known)
            res, data = check(env, "inner1")
            assert res.returncode == 3, (case, res.stdout + res.stderr)
            err = data["workers"][0]["error"]
            assert err["hop"] is None and err["message"].startswith("inner1: ")  # the worker's own key, not the bastion's
            if case == "unknown":
                assert err["error"] == "UnknownHostKey" and "host key of inner1 is unknown" in err["message"]
            else:
                assert err["error"] == "ChangedHostKey" and "HOST KEY CHANGED for inner1" in err["message"]
            run = sshexec("run", rb, env=env)
            assert run.returncode == 3 and "must-not-run" not in run.stdout, (case, run.stdout + run.stderr)
            assert kh.read_text() == known
            assert jl.accepted_logins() >= 1  # the bastion did let sshexec through...
            assert jl.accepted_logins(inner) == 0, case  # ...and the worker behind it was offered nothing


def test_trust_offers_the_bastion_then_the_worker(lab_env, tmp_path):
    with jump_lab(lab_env) as jl:
        inv, kh, env = jump_inventory(tmp_path, lab_env, jl, "")
        declined = sshexec("trust", "--worker", "inner1", env=env)  # no terminal, no --yes: nothing added
        assert declined.returncode == 2 and kh.read_text() == ""
        res = sshexec("trust", "--worker", "inner1", "--yes", "--json", env=env)
        assert res.returncode == 0, res.stderr
        hops = json.loads(res.stdout)["hops"]
        assert [(h["hop"], h["status"], h["added"]) for h in hops] == [("bastion", "unknown", True), (None, "unknown", True)]
        assert hops[0]["host"] == f"[127.0.0.1]:{jl.bastion_port}" and hops[1]["host"] == "inner1"
        ok, _ = check(env, "inner1")
        assert ok.returncode == 0, ok.stdout + ok.stderr


def test_workers_behind_one_bastion_share_one_connection_to_it(lab_env, tmp_path):
    with jump_lab(lab_env, count=3) as jl:
        inv, kh, env = jump_inventory(tmp_path, lab_env, jl, jl.bastion_keys() + jl.inner_keys())
        rb = write_runbook(tmp_path / "rb.yaml", {"name": "fan", "steps": [step("s", lab_env.image_ref("busybox"), "hostname", syntax="sh", pool="inner", feed="lab", target="each")]})
        before = jl.accepted_logins()
        run = sshexec("run", rb, "--json", env=env)
        assert run.returncode == 0, run.stdout + run.stderr
        assert sorted(s["worker"] for s in json.loads(run.stdout)["steps"]) == ["inner1", "inner2", "inner3"]
        assert jl.accepted_logins() - before == 1


BAD_INVENTORIES = {
    # name: (the inventory's text with {port}, the file:line field, words of the message)
    "jump-names-no-worker": ("workers:\n  - name: w1\n    host: 127.0.0.1\n    port: {port}\n    pools: [linux]\n    jump: nosuch\n",
                             "6 workers[w1].jump", "names no worker"),
    "cycle-of-jumps": ("workers:\n  - name: w1\n    host: 127.0.0.1\n    port: {port}\n    pools: [linux]\n    jump: w2\n"
                       "  - name: w2\n    host: 127.0.0.1\n    port: {port}\n    jump: w1\n", "10 workers[w2].jump", "a cycle of jumps"),
    "malformed-address": ("workers:\n  - name: w1\n    host: 127.0.0.1\n    port: {port}\n    pools: [linux]\n    jump: \"deploy@127.0.0.1:{port}:22\"\n",
                          "6 workers[w1].jump", "neither a worker name nor user@host:port"),
    "bad-port-in-address": ("workers:\n  - name: w1\n    host: 127.0.0.1\n    port: {port}\n    pools: [linux]\n    jump: \"deploy@127.0.0.1:99999\"\n",
                            "6 workers[w1].jump", "the port must be between 1 and 65535"),
    "docker-host-not-unix-or-tcp": ("defaults:\n  docker_host: http://127.0.0.1:{port}\nworkers:\n  - name: w1\n    host: 127.0.0.1\n    port: {port}\n    pools: [linux]\n",
                                    "2 defaults.docker_host", "must be a unix:///path/to/docker.sock or tcp://host:port URL"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_INVENTORIES, ids=list(BAD_INVENTORIES))
def test_bad_reaching_settings_exit_2_and_contact_nothing(lab_env, tmp_path, case):
    text, where, words = BAD_INVENTORIES[case]
    rec = PortRecorder()
    try:
        inv = tmp_path / "inv.yaml"
        inv.write_text(text.format(port=rec.port))
        rb = write_runbook(tmp_path / "rb.yaml", {"name": "bad", "steps": [step("s", lab_env.image_ref("busybox"), "echo must-not-run", syntax="sh")]})
        results = [sshexec(*args, "--inventory", inv) for args in (("check",), ("run", rb), ("trust", "--worker", "w1", "--yes"), ("prepull", lab_env.image_ref("busybox")))]
    finally:
        rec.close()
    for res in results:
        assert res.returncode == 2, res.stdout + res.stderr
        assert f"{inv}:{where}: " in res.stderr and words in res.stderr, res.stderr
        assert "must-not-run" not in res.stdout
    assert rec.accepted == []  # nothing was contacted, not even the port the inventory names
