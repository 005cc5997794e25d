"""Who may set a variable (config/variables.py): the runbook declares, --var / requests / retries only override,
and loader names (PYTHONPATH, NODE_OPTIONS, LD_PRELOAD, GIT_*...) are the runbook's alone."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from sshexec.config.inventory import load_inventory
from sshexec.config.runbook import load_runbook, parse_vars
from sshexec.config.variables import HARMLESS, LOADER_NAMES, is_loader, outside_values
from sshexec.errors import InputError
from sshexec.run.rerun import earlier_run, load_carry
from sshexec.run.runner import Runner
from sshexec.store.history import History

STEP = {"name": "deploy", "pool": "linux", "container": {"image": "img:1"}, "script": {"syntax": "sh", "inline": "true"}}


def runbook(tmp_path, **top):
    p = tmp_path / "rb.yaml"
    p.write_text(yaml.safe_dump({"name": "rel", **top, "steps": [STEP]}, sort_keys=False))
    return p


def refused(path) -> InputError:
    with pytest.raises(InputError) as info:
        load_runbook(path)
    return info.value


@pytest.mark.parametrize("name", ["PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME", "NODE_OPTIONS", "PERL5LIB", "PERL5OPT", "RUBYOPT", "RUBYLIB",
                                  "BASH_ENV", "ENV", "LD_PRELOAD", "LD_LIBRARY_PATH", "GIT_SSH_COMMAND", "GIT_CONFIG_GLOBAL", "JAVA_TOOL_OPTIONS"])  # fmt: skip
def test_a_loader_name_needs_the_runbooks_explicit_word(tmp_path, name):
    err = refused(runbook(tmp_path, variables={"GREETING": "hi", name: "/opt/lib"}))
    assert err.exit_code == 2 and err.field == f"variables.{name}" and err.line == 4
    assert "loader_variables:" in err.hint and name in err.message
    err = refused(runbook(tmp_path, sensitive_variables={name: {"env": "SOME_ENV"}}))  # a sensitive one too
    assert err.field == f"sensitive_variables.{name}"
    rb = load_runbook(runbook(tmp_path, variables={name: "/opt/lib"}, loader_variables=[name]))
    assert rb.loaders == {name} and rb.variables[name] == "/opt/lib"


def test_loader_variables_must_list_declared_loader_names(tmp_path):
    err = refused(runbook(tmp_path, variables={"GREETING": "hi", "PYTHONPATH": "/x"}, loader_variables=["PYTHONPATH", "NODE_OPTIONS", "GREETING"]))
    assert [(p.field, p.line) for p in err.problems] == [("loader_variables", 7), ("loader_variables", 8)]
    assert "NODE_OPTIONS is listed under loader_variables: but not declared" in str(err)
    assert "GREETING does not change how code is loaded" in str(err)


def test_what_is_and_is_not_a_loader_name():
    for name in ("PYTHONPATH", "PYTHONWARNINGS", "PYTHONBREAKPOINT", "LD_AUDIT", "GIT_EXEC_PATH", "LUA_INIT_5_4", "R_LIBS_USER", "GCONV_PATH"):
        assert is_loader(name), name
    for name in ("GREETING", "NODE_ENV", "PATH_INFO", "LDFLAGS", "GITHUB_SHA", "deploy.version", *HARMLESS):
        assert not is_loader(name), name
    assert "PYTHON*" in LOADER_NAMES and "GIT_*" in LOADER_NAMES


def test_var_may_set_only_declared_names(tmp_path):
    rb = load_runbook(runbook(tmp_path, variables={"RELEASE": "1.0", "GREETING": "hi", "PYTHONPATH": "/opt/lib"}, loader_variables=["PYTHONPATH"]))
    assert parse_vars(["RELEASE=2.0"], rb) == {"RELEASE": "2.0"}
    with pytest.raises(InputError) as info:
        parse_vars(["RELEASD=2.0"], rb)
    assert info.value.field == "--var RELEASD" and "not a variable of runbook 'rel'" in info.value.message
    assert info.value.hint.startswith("did you mean RELEASE?") and "PYTHONPATH" not in info.value.hint  # only what may be set
    with pytest.raises(InputError) as info:
        parse_vars(["deploy.version=9.9"], rb)  # a step's output cannot be set in advance
    assert info.value.field == "--var deploy.version"
    with pytest.raises(InputError) as info:
        parse_vars(["PYTHONPATH=/run/sshexec/vars.1", "sitecustomize.py=import os"], rb)
    assert {p.field for p in info.value.problems} == {"--var PYTHONPATH", "--var sitecustomize.py"}
    assert "only the runbook sets it" in str(info.value)


def test_request_values_are_checked_without_file_paths(tmp_path):
    rb = load_runbook(runbook(tmp_path, variables={"RELEASE": "1.0"}))
    assert outside_values({"RELEASE": "2"}, rb, "vars.{}") == {"RELEASE": "2"}
    with pytest.raises(InputError) as info:
        outside_values({"PYTHONPATH": "/x", "bad name": "x", "RELEASE": "a\0b"}, rb, "vars.{}")
    assert {p.field for p in info.value.problems} == {"vars.PYTHONPATH", "vars.bad name", "vars.RELEASE"}
    assert str(tmp_path) not in str(info.value) and all(p.file is None for p in info.value.problems)


def test_the_runner_refuses_undeclared_values_whoever_calls_it(tmp_path):
    inv_path = tmp_path / "inv.yaml"
    inv_path.write_text(yaml.safe_dump({"workers": [{"name": "w1", "host": "127.0.0.1", "port": 1, "pools": ["linux"]}]}))
    rb = load_runbook(runbook(tmp_path, variables={"RELEASE": "1.0", "LD_PRELOAD": "/opt/x.so"}, loader_variables=["LD_PRELOAD"]))
    for extra in ({"NOPE": "1"}, {"LD_PRELOAD": "/tmp/evil.so"}):
        with pytest.raises(InputError) as info:
            Runner(rb, load_inventory(inv_path), extra_vars=extra, history=History(tmp_path / "home")).prepare()
        assert info.value.field == f"vars.{next(iter(extra))}"


def test_a_retry_reuses_only_values_the_runbook_still_declares(tmp_path):
    history = History(tmp_path / "home")
    rb = load_runbook(runbook(tmp_path, variables={"RELEASE": "1.0"}))
    history.start_run("r1", "rel", runbook_path=str(rb.path), inventory="", variables={"RELEASE": "2.0", "PYTHONPATH": "/run/sshexec/vars.1"})
    history.finish_run("r1", "failed", 1, None)
    with pytest.raises(InputError) as info:
        load_carry(history, earlier_run(history, "r1"), rb)
    assert info.value.field == "--retry-failed r1: --var PYTHONPATH" and "not a variable" in info.value.message
    history.start_run("r2", "rel", runbook_path=str(rb.path), inventory="", variables={"RELEASE": "2.0"})
    history.finish_run("r2", "failed", 1, None)
    assert load_carry(history, earlier_run(history, "r2"), rb).variables == {"RELEASE": "2.0"}


def test_the_command_line_says_which_var_is_unknown(tmp_path):
    """The real `sshexec run` and `run --retry-failed`: exit 2, the name, the nearest declared one; nothing contacted."""
    rb = runbook(tmp_path, variables={"RELEASE": "1.0"})
    inv = tmp_path / "inv.yaml"
    inv.write_text(yaml.safe_dump({"workers": [{"name": "w1", "host": "127.0.0.1", "port": 1, "pools": ["linux"]}]}))
    env = {**os.environ, "SSHEXEC_HOME": str(tmp_path / "home")}

    def sshexec(*args):
        return subprocess.run([sys.executable, "-m", "sshexec", *args], capture_output=True, text=True, env=env, timeout=60)

    res = sshexec("run", str(rb), "--inventory", str(inv), "--var", "RELEASD=2.0", "--var", "PYTHONPATH=/tmp")
    assert res.returncode == 2, res.stderr
    assert "--var RELEASD: RELEASD is not a variable of runbook 'rel'" in res.stderr and "did you mean RELEASE?" in res.stderr
    assert "--var PYTHONPATH" in res.stderr
    assert History(tmp_path / "home").runs() == []  # nothing started
    history = History(tmp_path / "home")
    history.start_run("20250101-000000-abcdef", "rel", runbook_path=str(rb.resolve()), inventory=str(inv), variables={"GONE": "x"},
                      runbook_hash=load_runbook(rb).digest)  # fmt: skip
    history.finish_run("20250101-000000-abcdef", "failed", 1, None)
    res = sshexec("run", "--retry-failed", "20250101-000000-abcdef", "--inventory", str(inv))
    assert res.returncode == 2 and "--var GONE: GONE is not a variable of runbook 'rel'" in res.stderr, res.stderr


def test_docs_security_md_lists_every_loader_name():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text()
    section = doc.split("## Variables from outside, and loader names", 1)[1].split("\n## ", 1)[0]
    assert all(f"- `{n}`" in section for n in LOADER_NAMES) and all(f"`{n}`" in section for n in HARMLESS)
