"""Every remote command means the same to every login shell sshd may hand it to.

sshd runs a command as `$SHELL -c LINE`, and the user's login shell may be
fish or tcsh. Property tests (hypothesis) build scriptlet command lines from
random argvs and run them through the real sh, dash, bash, fish and tcsh of
this machine (scripts/bootstrap installs fish and tcsh): the sh program behind
the line must receive exactly its $0 and arguments, read its stdin and exit
with its own status, whatever the login shell and the locale.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sshexec.ops.check import CHECK
from sshexec.worker.docker import GO
from sshexec.worker.scriptlet import Scriptlet, quote, through_sh, unwrap

SHELLS = ("sh", "dash", "bash", "fish", "tcsh")
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# Prints $0, every argument and the docker words, NUL-terminated; then what it read on stdin; exits 7.
ECHO = Scriptlet("echo", r"""printf '%s\0' "$0" "$@" {docker}; cat; exit 7""")

# Characters every shell treats specially somewhere, so that hypothesis meets them often.
NASTY = "'\"\\$`!%\n\t\r ~*?[]{}()<>|&;#^=@,-\x01\x7f\u00e9\u2603\U0001f600"
words = st.text(alphabet=st.one_of(st.sampled_from(NASTY), st.characters(blacklist_characters="\0", blacklist_categories=("Cs",))), max_size=40)


@pytest.fixture(scope="module")
def shells(tmp_path_factory):
    missing = [s for s in SHELLS if shutil.which(s) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: run ./scripts/bootstrap")
    # A HOME of their own: fish and tcsh read (and fish writes) files under it.
    return tmp_path_factory.mktemp("shell-home")


def run_as_login_shell(shell: str, line: str, home, *, stdin: bytes = b"", locale: str = "C.UTF-8") -> subprocess.CompletedProcess:
    """What sshd does with an exec request: `$SHELL -c LINE`."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LC_ALL": locale, "USER": "deploy"}
    return subprocess.run([shell, "-c", line], input=stdin, capture_output=True, env=env, timeout=30)


def expected(name: str, args, stdin: bytes = b"") -> bytes:
    return b"".join(w.encode("utf-8", "surrogateescape") + b"\0" for w in (name, *args)) + stdin


@SETTINGS
@given(args=st.lists(words, max_size=6), docker=st.lists(words.filter(bool), min_size=1, max_size=3), locale=st.sampled_from(["C", "C.UTF-8"]))
@example(args=["!!", "!$", "a!b"], docker=["docker"], locale="C")  # tcsh history expansion
@example(args=["%s%d%n", "%%", "\\045"], docker=["docker"], locale="C")  # printf directives
@example(args=["'", '"', "\\", "\\\\", "\\'", "'\\''"], docker=["sudo", "-n", "docker"], locale="C.UTF-8")  # fish quotes
@example(args=["$(touch /tmp/x)", "`id`", "${HOME}", "$0", "$#"], docker=["docker"], locale="C")
@example(args=["line\nbreak", "\n", "", " "], docker=["docker"], locale="C")  # tcsh: no newline in quotes
@example(args=["~", "~root", "*", "{a,b}", "[ab]", "%1", "a;b", "a&b"], docker=["docker"], locale="C")
@example(args=["x" * 70000], docker=["docker"], locale="C")  # a long word
def test_every_login_shell_hands_the_exact_argv_to_sh(shells, args, docker, locale):
    line = ECHO.command(docker, *args)
    want = expected("sshexec-echo", [*args, *docker], b"stdin\x00\xff data")
    for shell in SHELLS:
        res = run_as_login_shell(shell, line, shells, stdin=b"stdin\x00\xff data", locale=locale)
        assert (res.returncode, res.stdout) == (7, want), f"{shell}: {res.stderr.decode(errors='replace')[:500]}"


def test_every_byte_arrives():
    """Every byte but NUL, in one argument and in the program (as a str from undecodable bytes)."""
    word = bytes(range(1, 256)).decode("utf-8", "surrogateescape")
    line = ECHO.command(["docker"], word, "after")
    for shell in SHELLS:
        res = run_as_login_shell(shell, line, "/nonexistent")
        assert (res.returncode, res.stdout) == (7, expected("sshexec-echo", [word, "after", "docker"])), shell


@given(args=st.lists(words, max_size=6), docker=st.lists(words.filter(bool), min_size=1, max_size=3))
@settings(max_examples=200, deadline=None)
def test_unwrap_gives_back_what_the_line_runs(args, docker):
    assert unwrap(ECHO.command(docker, *args)) == ECHO.argv(docker, *args)


@given(args=st.lists(words, max_size=6))
@settings(max_examples=200, deadline=None)
def test_the_line_is_one_line_of_safe_characters(args):
    line = ECHO.command(["docker"], *args)
    head, quoted, tail = line[: len("sh -c '")], line[len("sh -c '") : line.rindex("'")], line[line.rindex("'") :]
    assert head == "sh -c '" and tail == "' sshexec-echo"
    assert quoted.startswith('eval "$(printf "') and quoted.endswith('")"')
    inner = quoted[len('eval "$(printf "') : -len('")"')]
    assert line.isascii() and "\n" not in line
    assert not set(inner) & set("'\"$`!%\n\r\t"), inner
    # Backslashes only start an octal escape: never \\ or \' (fish), never at the end.
    assert all(inner[i + 1 : i + 4].isdigit() and len(inner[i + 1 : i + 4]) == 3 for i, c in enumerate(inner) if c == "\\")


def test_nul_and_bad_names_are_refused():
    with pytest.raises(ValueError):
        ECHO.command(["docker"], "a\0b")
    with pytest.raises(ValueError):
        through_sh("true", "bad name")
    with pytest.raises(TypeError):
        quote(["a", 1])


# What a kept connection passes as GO's `known` (worker/facts.py): the line of an inspect before it.
KNOWN = '\t'.join(["null", '["sh"]', '""', "linux", "amd64", '["127.0.0.1:5000/sshexec/tools@sha256:' + "1" * 64 + '"]', "sha256:" + "2" * 64])


def test_warm_path_lines_stay_short():
    """One GO line per step: the encoding costs about a third more than plain quoting, not a multiple."""
    argv = ["--rm", "-i", "--name", "sx-20260101-0000-abcdef-greet-w1", "--label", "sshexec.run=20260101-0000-abcdef",
            "--label", "sshexec.step=greet", "--label", "sshexec.worker=w1", "--log-driver", "none",
            "--tmpfs", "/run/sshexec:rw,nosuid,nodev,size=64m,mode=1777"]  # fmt: skip
    args = ["/var/lib/sx/work/w1", "20260101-0000-abcdef", "w1", "greet", argv[3], "127.0.0.1:5000/sshexec/tools:1", "0" * 16, "1234", "image",
            "3600 0 1764000000 4242 alice@laptop", "sha256:" + "0" * 64, KNOWN, *argv]  # fmt: skip
    go = GO.command(["docker"], *args)
    plain = quote(["sh", "-c", GO.script(["docker"]), "sshexec-go", *args])
    # GO with coord.GO_SH: ~6.4 KB plain. 8,192 until GO took `known` (issue 22): on a kept connection it carries the
    # inspect line GO printed before (~330 bytes encoded), in place of a `docker image inspect` (~20 ms) on the worker.
    assert len(go) < 1.5 * len(plain) and len(go) < 9000, (len(go), len(plain))
    check, check_plain = CHECK.command(["docker"], "~/.sshexec", ""), quote(["sh", "-c", CHECK.script(["docker"]), "sshexec-check", "~/.sshexec", ""])
    assert len(check) < 1.5 * len(check_plain), (len(check), len(check_plain))
