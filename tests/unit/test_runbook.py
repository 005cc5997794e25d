import subprocess
import textwrap

import pytest

from sshexec.config.inventory import load_inventory
from sshexec.config.runbook import check_against, check_image_reference, load_runbook, parse_vars, sensitive_values
from sshexec.core.secrets import Secret
from sshexec.errors import InputError
from sshexec.worker.scriptlet import Scriptlet, quote


def write(tmp_path, text, name="rb.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


GOOD = """
    name: hello
    variables: {GREETING: hello, N: 3, FLAG: true}
    sensitive_variables: {API_TOKEN: {env: MY_TOKEN}}
    steps:
      - name: greet
        pool: linux
        container: {image: 127.0.0.1:5000/sshexec/tools:1, feed: lab}
        script: {syntax: bash, inline: echo hi}
      - name: use
        pool: linux
        target: each
        container: {image: busybox, pull: never, user: worker}
        script: {syntax: sh, file: scripts/use.sh}
        files: payload
        timeout: 30
"""


def test_a_good_runbook(tmp_path):
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts/use.sh").write_text("echo use\n")
    (tmp_path / "payload").mkdir()
    rb = load_runbook(write(tmp_path, GOOD))
    assert rb.variables == {"GREETING": "hello", "N": "3", "FLAG": "true"}
    assert rb.sensitive == {"API_TOKEN": "MY_TOKEN"}
    greet, use = rb.steps
    assert (greet.target, greet.pull, greet.user, greet.timeout, greet.feed) == ("any", "if-not-present", "image", 3600, "lab")
    assert greet.script == b"echo hi"
    assert (use.target, use.pull, use.user, use.timeout) == ("each", "never", "worker", 30)
    assert use.script == b"echo use\n" and use.files == tmp_path / "payload"


@pytest.mark.parametrize(
    "text, line, field, words",
    [
        ("name: x\nsteps:\n  - {name: a, pool: p, container: {image: i}, script: {syntax: bash}}\n", 3, "steps[a].script", "exactly one of inline"),
        ("name: x\nsteps:\n  - {name: a, pool: p, container: {image: i}, script: {syntax: zsh, inline: x}}\n", 3, "steps[a].script.syntax", "bash"),
        ("name: x\nsteps:\n  - {name: 'a b', pool: p, container: {image: i}, script: {syntax: sh, inline: x}}\n", 3, "steps[a b].name", "'a b' is not allowed: it may hold only letters, digits, _ and -"),
        ("name: x\nsteps:\n  - {name: a, pool: p, container: {image: 'Bad/Image'}, script: {syntax: sh, inline: x}}\n", 3, "steps[a].container.image", "not a valid image reference"),
        ("name: x\nsteps:\n  - {name: a, pool: p, container: {image: 'i;rm -rf /'}, script: {syntax: sh, inline: x}}\n", 3, "steps[a].container.image", "not a valid image reference"),
        ("name: x\nsteps:\n  - {name: a, pool: p, container: {image: i, pull: sometimes}, script: {syntax: sh, inline: x}}\n", 3, "steps[a].container.pull", "always"),
        ("name: x\nsteps:\n  - {name: a, pool: p, container: {image: i}, script: {syntax: sh, inline: x}, timeout: 0}\n", 3, "steps[a].timeout", "timeout must be between 1s and 7d, not 0s"),
        ("name: x\nsteps:\n  - {name: a, pool: p, container: {image: i}, script: {syntax: sh, inline: x}}\n  - {name: a, pool: p, container: {image: i}, script: {syntax: sh, inline: x}}\n", 4, "steps[a].name", "duplicate step"),
        ("name: x\nvariables: {'a b': 1}\nsteps:\n  - {name: a, pool: p, container: {image: i}, script: {syntax: sh, inline: x}}\n", 2, "variables", "bad variable name"),
        ("name: x\nvariables: {A: [1, 2]}\nsteps:\n  - {name: a, pool: p, container: {image: i}, script: {syntax: sh, inline: x}}\n", 2, "variables.A", "valid string"),
        ("name: x\nsteps:\n  - {name: a, pool: p, container: {image: i}, script: {syntax: sh, file: nope.sh}}\n", 3, "steps[a].script.file", "not found"),
        ("name: x\nsteps:\n  - {name: a, pool: p, container: {image: i}, script: {syntax: sh, inline: x}, files: nodir}\n", 3, "steps[a].files", "not found"),
        ("name: x\nsteps: []\n", 2, "steps", "at least 1"),
        ("name: x\nsteps:\n  - {name: a, pool: p, container: {image: i}, script: {syntax: sh, inline: x}, extra: 1}\n", 3, "steps[a].extra", "unknown key"),
    ],
)
def test_bad_runbooks(tmp_path, text, line, field, words):
    p = write(tmp_path, text)
    with pytest.raises(InputError) as info:
        load_runbook(p)
    err = info.value
    assert (err.file, err.line, err.exit_code) == (str(p), line, 2)
    assert err.field == field
    assert words in str(err)


@pytest.mark.parametrize("ref", ["busybox", "busybox:1.36", "library/busybox", "127.0.0.1:5000/sshexec/tools:1", "localhost/a/b:c", "ghcr.io/org/img@sha256:" + "a" * 64, "reg.example.com:443/a_b/c-d.e:v1.2-3"])
def test_image_references_accepted(ref):
    assert check_image_reference(ref) == ref


@pytest.mark.parametrize("ref", ["", "UPPER/case", "a b", "a;b", "$(x)", "img:tag:tag", "img@sha256:short", "-rm", "a//b", "../x"])
def test_image_references_refused(ref):
    with pytest.raises(ValueError):
        check_image_reference(ref)


def test_pools_and_feeds_must_exist_in_the_inventory(tmp_path):
    inv = load_inventory(write(tmp_path, "workers:\n  - {name: w1, host: h, pools: [linux]}\nfeeds: []\n", "inv.yaml"))
    rb = load_runbook(write(tmp_path, "name: x\nsteps:\n  - name: a\n    pool: gpu\n    container: {image: i}\n    script: {syntax: sh, inline: x}\n"))
    with pytest.raises(InputError) as info:
        check_against(rb, inv)
    assert info.value.line == 4 and info.value.field == "steps[a].pool" and "unknown pool 'gpu'" in str(info.value)
    rb = load_runbook(write(tmp_path, "name: x\nsteps:\n  - name: a\n    pool: linux\n    container: {image: i, feed: nope}\n    script: {syntax: sh, inline: x}\n"))
    with pytest.raises(InputError, match="unknown feed 'nope'"):
        check_against(rb, inv)


def test_vars_and_sensitive_values(tmp_path):
    rb = load_runbook(write(tmp_path, "name: x\nvariables: {A: a, B: b, E: e}\nsensitive_variables: {T: {env: T_ENV}}\nsteps:\n  - {name: a, pool: p, container: {image: i}, script: {syntax: sh, inline: x}}\n"))
    assert parse_vars(["A=1", "B=x=y", "E="], rb) == {"A": "1", "B": "x=y", "E": ""}
    with pytest.raises(InputError, match="needs a value"):
        parse_vars(["A"], rb)
    with pytest.raises(InputError, match="bad variable name"):
        parse_vars(["1A=x"], rb)
    with pytest.raises(InputError, match="sensitive"):
        parse_vars(["T=x"], rb)
    with pytest.raises(InputError, match="T_ENV"):
        sensitive_values(rb, {})
    secret = sensitive_values(rb, {"T_ENV": "hunter2!"})["T"]
    assert secret.reveal() == "hunter2!" and "hunter2" not in repr(secret) and "hunter2" not in f"{secret}"


def test_sensitive_values_too_short_to_mask_are_refused_by_name(tmp_path):
    """The short-secret policy (stream.MIN_SECRET): refused before anything is contacted, naming every variable, never its value."""
    rb = load_runbook(write(tmp_path, """
        name: x
        sensitive_variables: {A: {env: A_ENV}, B: {env: B_ENV}, C: {env: C_ENV}, D: {env: D_ENV}}
        steps:
          - {name: a, pool: p, container: {image: i}, script: {syntax: sh, inline: x}}
    """))
    env = {"A_ENV": "x", "B_ENV": "", "C_ENV": "long-enough-token", "D_ENV": "7chars!"}
    with pytest.raises(InputError) as info:
        sensitive_values(rb, env)
    err = info.value
    assert err.exit_code == 2
    assert [(p.field, p.message) for p in err.problems] == [
        ("sensitive_variables.A", "sensitive variable A: $A_ENV is shorter than 8 characters"),
        ("sensitive_variables.B", "sensitive variable B: $B_ENV is empty"),
        ("sensitive_variables.D", "sensitive variable D: $D_ENV is shorter than 8 characters"),
    ]
    assert "at least 8 characters" in str(err) and "7chars!" not in str(err) and "long-enough" not in str(err)
    ok = sensitive_values(rb, {**env, "A_ENV": "12345678", "B_ENV": "ééééééééé", "D_ENV": "a much longer token"})
    assert {k: v.reveal() for k, v in ok.items()} == {"A": "12345678", "B": "ééééééééé", "C": "long-enough-token", "D": "a much longer token"}


def test_variable_that_would_hide_a_step_output(tmp_path):
    p = write(tmp_path, "name: x\nvariables: {a.Out: 1}\nsteps:\n  - {name: a, pool: p, container: {image: i}, script: {syntax: sh, inline: x}}\n")
    with pytest.raises(InputError, match="hide an output of step a"):
        load_runbook(p)


def test_quote_and_scriptlets():
    assert quote(["echo", "a b", "$(x)", "it's"]) == "echo 'a b' '$(x)' 'it'\"'\"'s'"
    with pytest.raises(ValueError):
        quote(["a\0b"])
    with pytest.raises(TypeError):
        quote(["a", 1])
    s = Scriptlet("t", 'set -- {docker}; echo "$1"')
    assert s.script(["sudo", "-n", "docker"]) == 'set -- sudo -n docker; echo "$1"'
    line = s.command(["sudo", "-n", "docker"], "x;y")
    assert line.startswith("sh -c 'eval ") and line.endswith("' sshexec-t")
    assert subprocess.run(["sh", "-c", line], capture_output=True).stdout == b"sudo\n"


def test_secret_never_prints():
    s = Secret("pw")
    assert "pw" not in str(s) + repr(s) + f"{s}" + "%s" % s
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(s)
