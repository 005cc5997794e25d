"""known_hosts: lookups, key-type preference, and concurrent writers under `sshexec trust`."""

from __future__ import annotations

import multiprocessing

import paramiko

from sshexec.ssh.hostkeys import add_known_host, known_keys, preferred_key_types


def _add(path: str, i: int) -> None:
    from pathlib import Path

    add_known_host(Path(path), f"[127.0.0.1]:{2200 + i}", paramiko.ECDSAKey.generate())


def test_concurrent_trusts_lose_no_key(tmp_path):
    """Two `sshexec trust` at once used to rewrite known_hosts through one fixed temporary name."""
    kh = tmp_path / "known_hosts"
    kh.write_text("# mine\n")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_add, args=(str(kh), i)) for i in range(12)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    lines = kh.read_text().splitlines()
    assert lines[0] == "# mine" and len(lines) == 13
    assert all(known_keys(kh, "127.0.0.1", 2200 + i) for i in range(12))
    assert [p.name for p in tmp_path.iterdir() if p.name not in ("known_hosts", "known_hosts.lock")] == []
    assert oct(kh.stat().st_mode & 0o777) == "0o600"


def test_replace_drops_only_that_hosts_lines(tmp_path):
    kh = tmp_path / "known_hosts"
    a, b, c = paramiko.ECDSAKey.generate(), paramiko.ECDSAKey.generate(), paramiko.ECDSAKey.generate()
    add_known_host(kh, "[h]:2222", a)
    add_known_host(kh, "other", b)
    add_known_host(kh, "[h]:2222", c, replace=True)
    assert known_keys(kh, "h", 2222) == {c.get_name(): c}
    assert known_keys(kh, "other", 22) == {b.get_name(): b}


def test_known_key_types_are_asked_for_first():
    rsa = paramiko.RSAKey.generate(1024)
    offered = ["ssh-ed25519", "ecdsa-sha2-nistp256", "rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"]
    assert preferred_key_types({"ssh-rsa": rsa}, offered)[:2] == ["rsa-sha2-512", "rsa-sha2-256"]
    assert preferred_key_types({"ecdsa-sha2-nistp256": None}, offered)[0] == "ecdsa-sha2-nistp256"
    assert preferred_key_types({}, offered) == offered
