"""`Include` in the operator's ssh config, resolved on top of paramiko as OpenSSH does (ssh/_sshconfig.py)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from sshexec.errors import InputError
from sshexec.ssh import _sshconfig


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_nested_glob_relative_and_tilde_includes_with_a_host_star_after_them(home):
    ssh = home / ".ssh"
    config = write(ssh / "config", "Include config.d/*\n\nHost *\n  Port 1\n  User nobody\n")
    write(ssh / "config.d" / "10-first", "Include ~/.ssh/nested/*.conf\n")
    write(ssh / "config.d" / "20-second", "Host beta\n  HostName 10.0.0.2\n  User deploy\n")
    write(ssh / "nested" / "alpha.conf", "Host alpha\n  HostName 10.0.0.1\n  Port 2222\n  ProxyJump jumper:2200\n")
    write(ssh / "nested" / "ignored.txt", "Host alpha\n  Port 9\n")
    cfg = _sshconfig.load(config, None)
    alpha = cfg.lookup("alpha")
    assert (alpha["hostname"], alpha["port"], alpha["proxyjump"], alpha["user"]) == ("10.0.0.1", "2222", "jumper:2200", "nobody")
    beta = cfg.lookup("beta")
    assert (beta["hostname"], beta["port"], beta["user"]) == ("10.0.0.2", "1", "deploy")
    assert cfg.lookup("other")["port"] == "1"  # the Host * after the Include is in force again


def test_an_include_inside_a_host_block_applies_only_to_that_host(home):
    config = write(home / ".ssh" / "config", "Host prod-*\n  Include prod.conf\n  User ops\n\nHost *\n  User anyone\n")
    write(home / ".ssh" / "prod.conf", "Port 2200\nHost prod-db\n  HostName 10.1.0.5\nHost dev-db\n  HostName 10.9.9.9\n")
    cfg = _sshconfig.load(config, None)
    db = cfg.lookup("prod-db")
    assert (db["hostname"], db["port"], db["user"]) == ("10.1.0.5", "2200", "ops")  # User ops: after the Include, prod-* again
    dev = cfg.lookup("dev-db")
    assert dev["hostname"] == "dev-db" and "port" not in dev and dev["user"] == "anyone"  # prod.conf's Host dev-db is under prod-*


def test_quoted_paths_several_patterns_and_a_pattern_matching_nothing(home):
    config = write(home / ".ssh" / "config", 'Include "with space/a.conf" /nonexistent/*.conf b.conf\n')
    write(home / ".ssh" / "with space" / "a.conf", "Host a\n  Port 1001\n")
    write(home / ".ssh" / "b.conf", "Host b\n  Port 1002\n")
    cfg = _sshconfig.load(config, None)
    assert cfg.lookup("a")["port"] == "1001" and cfg.lookup("b")["port"] == "1002"


def test_an_include_loop_is_an_error_not_a_hang(home):
    config = write(home / ".ssh" / "config", "Include config\n")
    with pytest.raises(InputError, match="nested more than 16 deep"):
        _sshconfig.load(config, None)


def test_the_user_config_comes_before_the_system_one(home, tmp_path):
    user = write(home / ".ssh" / "config", "Host x\n  Port 11\n")
    system = write(tmp_path / "etc" / "ssh_config", "Host *\n  Port 22\n  User sys\n")
    cfg = _sshconfig.load(user, system)
    assert cfg.lookup("x")["port"] == "11" and cfg.lookup("x")["user"] == "sys"


@pytest.mark.skipif(shutil.which("ssh") is None, reason="compares with the OpenSSH client, which bootstrap installs")
def test_agrees_with_openssh_on_absolute_includes(home, tmp_path):
    """The same files read by `ssh -G` (absolute paths, so OpenSSH's own ~ does not matter)."""
    d = tmp_path / "cfg"
    config = write(d / "main", f"Include {d}/parts/*\nHost *\n  Port 1\n")
    write(d / "parts" / "a", f"Host web\n  Include {d}/deep\n  User www\n")
    write(d / "deep", "HostName 192.0.2.7\nPort 2022\nHost web\n  ProxyJump j1\n")
    cfg = _sshconfig.load(config, None)
    for host in ("web", "other"):
        out = subprocess.run(["ssh", "-G", "-F", str(config), host], capture_output=True, text=True, check=True).stdout
        theirs = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
        ours = cfg.lookup(host)
        for key in ("hostname", "port", "user", "proxyjump"):
            if key in ours or key in ("hostname", "port"):
                assert ours.get(key) == theirs.get(key), (host, key)
