"""Every problem of a bad inventory or runbook at once, each with file:line:field, and typo hints."""

from __future__ import annotations

import textwrap

import pytest

from sshexec.config._yaml import unknown_key
from sshexec.config.inventory import load_inventory
from sshexec.config.runbook import check_against, load_runbook
from sshexec.errors import InputError, Problem


def write(tmp_path, text, name="rb.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text).lstrip("\n"))
    return p


def problems(load, path) -> list[tuple[int | None, str | None, str]]:
    with pytest.raises(InputError) as info:
        load(path)
    return [(p.line, p.field, p.message) for p in info.value.problems]


def test_a_typo_of_a_required_key_is_one_problem(tmp_path):
    """It used to say "container: this field is required (and 1 more problem)", then both; one line says it all."""
    p = write(tmp_path, """
        name: hello
        steps:
          - name: greet
            pool: linux
            contianer: {image: 127.0.0.1:5000/sshexec/tools:1}
            script: {syntax: bash, inline: echo hi}
    """)
    with pytest.raises(InputError) as info:
        load_runbook(p)
    err = info.value
    assert [(q.line, q.field, q.message) for q in err.problems] == [
        (5, "steps[greet].contianer", "unknown key: did you mean 'container'?"),
    ]
    # The problem's place is on the error (tests and --json rely on it).
    assert (err.file, err.line, err.field) == (str(p), 5, "steps[greet].contianer")
    assert str(err) == f"{p}:5 steps[greet].contianer: unknown key: did you mean 'container'?"
    assert err.exit_code == 2


def test_typos_get_the_nearest_key_at_every_level(tmp_path):
    p = write(tmp_path, """
        name: hello
        variabels: {A: 1}
        steps:
          - name: greet
            pool: linux
            container: {image: 127.0.0.1:5000/x:1, pul: always, usr: worker}
            script: {syntx: bash, inline: echo}
            timout: 5
        sensitive_variables: {T: {evn: T_ENV}}
    """)
    got = problems(load_runbook, p)
    assert (2, "variabels", "unknown key: did you mean 'variables'?") in got
    assert (6, "steps[greet].container.pul", "unknown key: did you mean 'pull'?") in got
    assert (6, "steps[greet].container.usr", "unknown key: did you mean 'user'?") in got
    assert (7, "steps[greet].script.syntx", "unknown key: did you mean 'syntax'?") in got
    assert (8, "steps[greet].timout", "unknown key: did you mean 'timeout'?") in got
    assert (9, "sensitive_variables.T.evn", "unknown key: did you mean 'env'?") in got  # under a mapping of models
    assert not [f for _, f, m in got if m == "this field is required"]  # syntx: says it (as timout: and the rest do)
    assert [line for line, _, _ in got] == sorted(line for line, _, _ in got), "in file order"


def test_a_key_like_none_of_the_valid_ones_lists_them(tmp_path):
    p = write(tmp_path, """
        name: hello
        steps:
          - {name: a, pool: p, container: {image: i}, script: {syntax: sh, inline: x}, zzzzqqq: 1}
    """)
    ((line, field, message),) = problems(load_runbook, p)
    assert (line, field) == (3, "steps[a].zzzzqqq")
    assert message == "unknown key: the keys here are name, pool, target, container, script, approval, files, timeout, if, rolling, retries, lock"


def test_unknown_key_suggestions():
    assert unknown_key("contianer", ["image", "container"]) == "unknown key: did you mean 'container'?"
    assert unknown_key("Name", ["name", "pool"]) == "unknown key: did you mean 'name'?"
    assert unknown_key("xyz", ["name", "pool"]) == "unknown key: the keys here are name, pool"
    assert unknown_key(3, []) == "unknown key (see the format in the README)"


def test_inventory_typos_and_several_problems(tmp_path):
    p = write(tmp_path, """
        defaults: {usr: deploy, prot: 22}
        workers:
          - {name: w1, hots: 10.0.0.1, pools: [linux]}
          - {name: w2, host: 10.0.0.2, port: 99999}
          - {name: w1, host: 10.0.0.3}
        feeds:
          - {name: lab, registry: 127.0.0.1:5000, usrname: ci}
    """, "inv.yaml")
    got = problems(load_inventory, p)
    assert got == [
        (1, "defaults.usr", "unknown key: did you mean 'user'?"),
        (1, "defaults.prot", "unknown key: did you mean 'port'?"),
        (3, "workers[w1].hots", "unknown key: did you mean 'host'?"),
        (4, "workers[w2].port", "Input should be less than or equal to 65535"),
        (5, "workers[w1].name", "duplicate worker name 'w1': worker names must be unique"),
        (7, "feeds[lab].usrname", "unknown key: did you mean 'username'?"),
    ]


def test_list_items_are_named_by_their_name_else_their_index(tmp_path):
    p = write(tmp_path, """
        name: hello
        steps:
          - {name: build, pool: p, container: {image: i}, script: {syntax: sh, inline: x}, timeout: 0}
          - {pool: p, container: {image: i}, script: {syntax: sh, inline: x}}
          - {name: "bad name!", pool: p, container: {image: "Bad:Image"}, script: {syntax: sh, inline: x}}
    """)
    got = problems(load_runbook, p)
    assert (3, "steps[build].timeout", "timeout must be between 1s and 7d, not 0s") in got
    assert (4, "steps[1].name", "this field is required") in got
    fields = {field for _, field, _ in got}
    assert {"steps[bad name!].name", "steps[bad name!].container.image"} <= fields


def test_a_value_that_fits_no_member_of_a_union_is_one_problem(tmp_path):
    p = write(tmp_path, """
        workers:
          - {name: w1, host: h, jump: 5}
        """, "inv.yaml")
    got = problems(load_inventory, p)
    assert [(line, field) for line, field, _ in got] == [(2, "workers[w1].jump")]


def test_many_problems_are_capped_on_screen_but_all_kept(tmp_path):
    steps = "\n".join(f"  - {{name: s{i}, pool: p, container: {{image: i}}, script: {{syntax: sh, inline: x}}, timeout: 0}}" for i in range(25))
    p = tmp_path / "rb.yaml"
    p.write_text(f"name: many\nsteps:\n{steps}\n")
    with pytest.raises(InputError) as info:
        load_runbook(p)
    err = info.value
    assert len(err.problems) == 25
    lines = str(err).splitlines()
    assert lines[0] == f"25 problems in {p}:"
    shown = [line for line in lines[1:] if line.startswith(f"  {p}:")]
    assert len(shown) == InputError.MAX_SHOWN == 20
    assert shown[0] == f"  {p}:3 steps[s0].timeout: timeout must be between 1s and 7d, not 0s"
    assert lines[-1] == "  and 5 more problems"
    data = err.to_dict()
    assert len(data["problems"]) == 25 and (data["file"], data["line"], data["field"]) == (str(p), 3, "steps[s0].timeout")
    assert data["problems"][24] == {"file": str(p), "line": 27, "field": "steps[s24].timeout", "message": "timeout must be between 1s and 7d, not 0s", "hint": None}


def test_the_runbook_checks_after_the_model_are_collected_too(tmp_path):
    (tmp_path / "payload").mkdir()
    p = write(tmp_path, """
        name: hello
        variables: {X: 1, build.Out: 2}
        sensitive_variables: {X: {env: X_ENV}}
        steps:
          - {name: build, pool: p, container: {image: i}, script: {syntax: sh, file: missing.sh}}
          - {name: ship, pool: p, container: {image: i}, script: {syntax: sh, inline: x}, files: nowhere/}
          - {name: last, pool: p, container: {image: i}, script: {syntax: sh, file: gone.sh}, files: payload/}
    """)
    with pytest.raises(InputError) as info:
        load_runbook(p)
    got = [(q.line, q.field) for q in info.value.problems]
    assert got == [
        (2, "variables.build.Out"),
        (3, "sensitive_variables.X"),
        (5, "steps[build].script.file"),
        (6, "steps[ship].files"),
        (7, "steps[last].script.file"),
    ]
    text = str(info.value)
    assert "would hide an output of step build" in text and "X is both a plain and a sensitive variable" in text
    assert "missing.sh not found" in text and "gone.sh not found" in text and "nowhere not found" in text
    assert "→ script.file is relative to the runbook file" in text  # each problem's hint under it


def test_unknown_pools_and_feeds_are_all_reported(tmp_path):
    inv = load_inventory(write(tmp_path, "workers:\n  - {name: w1, host: h, pools: [linux]}\nfeeds:\n  - {name: lab, registry: r:1}\n", "inv.yaml"))
    rb = load_runbook(write(tmp_path, """
        name: hello
        steps:
          - {name: a, pool: gpu, container: {image: i, feed: nope}, script: {syntax: sh, inline: x}}
          - {name: b, pool: linux, container: {image: i}, script: {syntax: sh, inline: x}}
          - {name: c, pool: arm, container: {image: i, feed: lab}, script: {syntax: sh, inline: x}}
    """))
    with pytest.raises(InputError) as info:
        check_against(rb, inv)
    assert [(q.line, q.field) for q in info.value.problems] == [(3, "steps[a].pool"), (3, "steps[a].container.feed"), (5, "steps[c].pool")]
    assert "pools in the inventory: linux" in str(info.value)


def test_every_bad_jump_is_reported_once(tmp_path):
    p = write(tmp_path, """
        defaults: {jump: nowhere}
        workers:
          - {name: a, host: a}
          - {name: b, host: b}
          - {name: c, host: c, jump: "ghost"}
    """, "inv.yaml")
    got = problems(load_inventory, p)
    assert [(line, field) for line, field, _ in got] == [(1, "defaults.jump"), (5, "workers[c].jump")]
    assert "'nowhere' names no worker" in got[0][2] and "'ghost' names no worker" in got[1][2]


def test_one_problem_reads_as_before(tmp_path):
    p = write(tmp_path, "name: x\nsteps:\n  - {name: a, pool: p, container: {image: i}, script: {syntax: sh, inline: x}, timeout: 0}\n")
    with pytest.raises(InputError) as info:
        load_runbook(p)
    assert str(info.value) == f"{p}:3 steps[a].timeout: timeout must be between 1s and 7d, not 0s"
    assert info.value.to_dict()["problems"] == [Problem("timeout must be between 1s and 7d, not 0s", str(p), 3, "steps[a].timeout").to_dict()]


def test_a_problem_says_where_it_is():
    assert str(Problem("bad", "f.yaml", 3, "a.b")) == "f.yaml:3 a.b: bad"
    assert str(Problem("bad", field="a.b")) == "a.b: bad"
    assert str(Problem("bad")) == "bad"
    with pytest.raises(ValueError):
        InputError()


def test_keys_are_named_as_files_write_them(tmp_path):
    """A field with an alias (`if`, held as `condition`) is suggested by the key a file uses."""
    p = write(tmp_path, """
        name: hello
        steps:
          - {name: a, pool: p, container: {image: i}, script: {syntax: sh, inline: x}, iff: always}
    """)
    ((line, field, message),) = problems(load_runbook, p)
    assert (line, field, message) == (3, "steps[a].iff", "unknown key: did you mean 'if'?")


def test_one_runbook_with_a_problem_of_each_kind_reports_them_all_in_one_pass(tmp_path):
    """Structure, a script file, a feed and a pool: one InputError with all four (it used to take three rounds)."""
    inv = load_inventory(write(tmp_path, "workers:\n  - {name: w1, host: h, pools: [linux]}\nfeeds:\n  - {name: lab, registry: r:1}\n", "inv.yaml"))
    p = write(tmp_path, """
        name: hello
        steps:
          - name: build
            pool: linxu
            container: {image: i, feed: labb}
            script: {syntax: sh, file: scripts/missing.sh}
            timeout: soon
    """)
    got = problems(lambda path: load_runbook(path, inv), p)
    assert got == [
        (4, "steps[build].pool", "unknown pool 'linxu': did you mean 'linux'?"),
        (5, "steps[build].container.feed", "unknown feed 'labb': did you mean 'lab'?"),
        (6, "steps[build].script.file", f"script file {tmp_path}/scripts/missing.sh not found"),
        (7, "steps[build].timeout", "timeout must be seconds (90) or a duration with a unit (90s, 5m, 1h, 1h30m), not 'soon'"),
    ]


def test_the_command_line_reports_every_kind_at_once(tmp_path):
    import subprocess
    import sys

    from labkit import REPO

    inv = write(tmp_path, "workers:\n  - {name: w1, host: 127.0.0.1, port: 1, pools: [linux]}\nfeeds:\n  - {name: lab, registry: r:1}\n", "inv.yaml")
    rb = write(tmp_path, """
        name: hello
        steps:
          - {name: a, pool: linxu, container: {image: i, feed: labb}, script: {syntax: pyhton, file: nope.sh}, hots: 1}
    """)
    res = subprocess.run([sys.executable, "-m", "sshexec", "run", str(rb), "--inventory", str(inv)], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert res.returncode == 2
    err = " ".join(res.stderr.split())
    for words in ("5 problems", "unknown pool 'linxu'", "unknown feed 'labb'", "nope.sh not found", "did you mean 'python'?", "hots: unknown key"):
        assert words in err, (words, res.stderr)


def test_bad_values_are_worded_with_the_nearest_valid_one(tmp_path):
    p = write(tmp_path, """
        name: hello
        steps:
          - {name: a, pool: p, if: sucess, container: {image: i}, script: {syntax: pyhton, inline: x}}
    """)
    got = {field: message for _, field, message in problems(load_runbook, p)}
    assert got == {
        "steps[a].if": "unknown value 'sucess': did you mean 'success'? use one of success, failure, always",
        "steps[a].script.syntax": "unknown value 'pyhton': did you mean 'python'? use one of bash, sh, python",
    }
    inv = write(tmp_path, "workers:\n  - {name: W2, hots: 10.0.0.2}\n", "inv.yaml")
    assert problems(load_inventory, inv) == [
        (2, "workers[W2].name", "'W2' is not allowed: did you mean 'w2'? (it may hold only lowercase letters, digits and _ . -, starting with a letter or digit)"),
        (2, "workers[W2].hots", "unknown key: did you mean 'host'?"),  # one line for the typo, no "host: required"
    ]


@pytest.mark.parametrize("written, seconds", [(90, 90), ("90", 90), ("90s", 90), ("5m", 300), ("1h", 3600), ("1h30m", 5400), ("1.5m", 90), ("2d", 172800)])
def test_durations_with_a_unit_are_accepted_everywhere_a_time_is_given(tmp_path, written, seconds):
    from sshexec.cli.common import seconds as option_seconds

    p = write(tmp_path, f"""
        name: hello
        steps:
          - name: a
            pool: p
            target: each
            container: {{image: i}}
            script: {{syntax: sh, inline: x}}
            timeout: {written!r}
            rolling: {{pause: {written!r}}}
            retries: {{attempts: 2, delay: {min(seconds, 3600)!r}}}
    """)
    step = load_runbook(p).steps[0]
    assert (step.timeout, step.rolling.pause) == (seconds, seconds)
    inv = load_inventory(write(tmp_path, f"defaults: {{lock_stale: {min(seconds, 86400)!r}, connect_timeout: {min(seconds, 600)!r}}}\nworkers:\n  - {{name: w1, host: h}}\n", "inv.yaml"))
    assert inv.worker("w1").lock_stale == min(seconds, 86400)
    assert option_seconds(str(written), "--lock-wait") == seconds


@pytest.mark.parametrize("written", ["5x", "m5", "5 minutes", "-1s", "true"])
def test_a_bad_duration_says_the_unit(tmp_path, written):
    from sshexec.cli.common import seconds as option_seconds

    with pytest.raises(InputError, match=r"--lock-wait must be (seconds \(90\) or a duration with a unit \(90s, 5m, 1h|between 0s)"):
        option_seconds(written, "--lock-wait")
    inv = write(tmp_path, f"defaults: {{lock_stale: {written!r}}}\nworkers:\n  - {{name: w1, host: h}}\n", "inv.yaml")
    ((_, field, message),) = problems(load_inventory, inv)
    assert field == "defaults.lock_stale" and message.startswith("lock_stale must be ") and ("90s, 5m, 1h" in message or "between 1s and 1d" in message)
