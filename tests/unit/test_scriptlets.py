"""command.Scriptlet: every value reaches the sh program as one positional parameter, and the
inventory's docker command is substituted as quoted words. Run by real shells, with a fake docker."""

from __future__ import annotations

import re
import shlex
import subprocess

import pytest
from labkit import require_programs

from sshexec.ops import check as health
from sshexec.worker import docker as docker_mod
from sshexec.worker.scriptlet import Scriptlet, quote

HOSTILE = ["a b", "$(touch pwned)", "`touch pwned`", "'", '"', "\n", "-e", "--help", "*", "~", "; rm -rf /", "", "\\", "%s", "ünï"]
SCRIPTLETS = [v for v in vars(docker_mod).values() if isinstance(v, Scriptlet)] + [health.CHECK]
SHELLS = [["dash"], ["bash"], ["busybox", "sh"]]  # a missing one fails the module: scripts/bootstrap installs them


@pytest.fixture(autouse=True, scope="module")
def _shells_installed():
    require_programs("dash", "bash", "busybox")

PROBE = Scriptlet("probe", 'printf "%s\\0" {docker} -- "$@"')


def run_command(command: str, shell=("sh",), **kw) -> subprocess.CompletedProcess:
    """What sshd does with the command line: hand it to the user's shell."""
    return subprocess.run([*shell, "-c", command], capture_output=True, timeout=20, **kw)


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_values_and_docker_words_arrive_intact(shell, tmp_path):
    docker = ["sudo", "-n", "/opt/my docker/bin/docker", "--context=$(id)"]
    p = run_command(PROBE.command(docker, *HOSTILE), shell, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.decode().split("\0")[:-1] == [*docker, "--", *HOSTILE]
    assert list(tmp_path.iterdir()) == []  # nothing was run


def test_argv_is_sh_dash_c_then_the_values():
    argv = PROBE.argv(["docker"], "x", "y z")
    assert argv[:2] == ["sh", "-c"] and argv[3:] == ["sshexec-probe", "x", "y z"]
    # The command line runs the same program with the same values (test_command_shells.py: under any login shell).
    line = run_command(PROBE.command(["docker"], *HOSTILE))
    direct = subprocess.run(PROBE.argv(["docker"], *HOSTILE), capture_output=True, timeout=20)
    assert line.returncode == direct.returncode == 0 and line.stdout == direct.stdout
    assert shlex.split(PROBE.command(["docker"], *HOSTILE))[-1] == "sshexec-probe"


@pytest.mark.parametrize("s", SCRIPTLETS, ids=lambda s: s.name)
def test_every_scriptlet_takes_values_only_as_parameters(s):
    """No value is ever formatted into a scriptlet: the only placeholder is {docker}."""
    assert set(re.findall(r"(?<!\{)\{[A-Za-z_]+\}(?!\})", s.text)) <= {"{docker}"}
    body = s.argv(["the docker"], "VALUE")[2]
    assert "VALUE" not in body and "{docker}" not in body
    assert ("'the docker'" in body) == ("{docker}" in s.text)
    # The text is valid sh (parsed, not run).
    p = subprocess.run(["sh", "-n", "-c", body], capture_output=True, timeout=10)
    assert p.returncode == 0, p.stderr


FAKE_DOCKER = """#!/bin/sh
# Records each call's argv (NUL-separated, one call per line) and the login's stdin.
{ printf '%s\\0' "$@"; printf '\\n'; } >> "$LOG"
for a; do [ "$a" = --password-stdin ] && cat > "$LOG.stdin"; done
for a; do [ "$a" = inspect ] && printf 'null\\t["sh"]\\t""\\tlinux\\tamd64\\tsha256:abc\\n'; done
exit 0
"""


def test_pull_scriptlet_passes_each_value_as_one_word_and_the_password_on_stdin(tmp_path):
    bindir = tmp_path / "my bin"
    bindir.mkdir()
    fake = bindir / "docker"
    fake.write_text(FAKE_DOCKER)
    fake.chmod(0o755)
    log = tmp_path / "calls"
    root = tmp_path / "work root"
    user = "ci user'; touch pwned #"
    command = docker_mod.PULL.command([str(fake)], "127.0.0.1:5000/x:1", "127.0.0.1:5000", user, str(root), "runs/r 1/docker-config")
    p = run_command(command, input=b"pass word $(id)", env={"PATH": "/usr/bin:/bin", "LOG": str(log)}, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    calls = [line.split("\0")[:-1] for line in log.read_text().splitlines()]
    cfg = f"{root}/runs/r 1/docker-config"
    assert calls == [
        ["--config", cfg, "login", "--username", user, "--password-stdin", "127.0.0.1:5000"],
        ["--config", cfg, "pull", "127.0.0.1:5000/x:1"],
        ["image", "inspect", "--format", docker_mod.IMAGE_FORMAT, "127.0.0.1:5000/x:1"],
    ]
    assert (tmp_path / "calls.stdin").read_bytes() == b"pass word $(id)"
    assert p.stdout.decode().startswith("image\t127.0.0.1:5000/x:1\tnull\t")
    assert not (root / "runs" / "r 1" / "docker-config").exists()  # the credentials are gone
    assert not (tmp_path / "pwned").exists()


def test_quote_is_the_only_quoting():
    assert quote([]) == ""
    assert quote(["a", "", "b c"]) == "a '' 'b c'"
