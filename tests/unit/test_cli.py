"""The command line: its own options, help, completion, parse errors and exit codes (no workers contacted)."""

from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
from invoke import Program
from labkit import REPO
from readme_blocks import HELP_BEGIN, README, help_block

from sshexec.cli import ns, program

COMMANDS = {"check", "trust", "run", "runs", "logs", "prepull", "locks", "unlock", "gc", "lab", "demo", "serve", "token", "db", "history", "artifact", "submit", "nodes", "schedule", "agent", "audit", "notify", "approve"}
OURS = {"help", "version", "list", "print-completion-script", "complete"}
# invoke's own core flags, as invoke 2.2 lists them; the test below also asks invoke itself.
INVOKE_FLAGS = (
    "--prompt-for-sudo-password", "--write-pyc", "--pty", "--echo", "--dry", "--command-timeout",
    "--collection", "--search-root", "--hide", "--warn-only", "--debug", "--config", "--list-format",
    "--list-depth", "--no-dedupe",
)  # fmt: skip


@pytest.fixture
def sx(capsys):
    """The sshexec program in this process: (exit code, stdout, stderr)."""

    def call(*argv):
        code = program.run(["sshexec", *argv], exit=False)
        cap = capsys.readouterr()
        return code, cap.out, cap.err

    return call


def sx_process(*args, **kw):
    return subprocess.run([sys.executable, "-m", "sshexec", *args], capture_output=True, text=True, cwd=REPO, timeout=60, **kw)


def test_the_collection_is_the_commands():
    assert set(ns.task_names) == COMMANDS


def test_help_lists_every_command_with_its_summary(sx):
    code, out, err = sx("--help")
    assert code == 0 and err == ""
    listed = out.split("Commands:\n", 1)[1].split("Options:\n", 1)[0]
    assert sorted(line.split()[0] for line in listed.splitlines() if line.strip()) == sorted(COMMANDS), "one line per command"
    for name in COMMANDS:
        summary = inspect.getdoc(ns[name]).splitlines()[0]
        line = next(line for line in listed.splitlines() if line.split()[:1] == [name])
        assert summary.split()[:4] == line.split()[1:5], (name, line)


def test_help_shows_sshexec_options_only(sx):
    out = sx("--help")[1]
    options = out.split("Options:\n", 1)[1]
    shown = {line.split()[0].rstrip(",") for line in options.splitlines() if line.startswith("  -")}
    assert shown == {"-h", "-V", "-l", "--print-completion-script"}
    for flag in INVOKE_FLAGS:
        assert flag not in out, flag
    # and whatever flags invoke itself has today
    for arg in Program().core_args() + Program().task_args():
        if arg.name not in OURS:
            assert f"--{arg.name}" not in out, arg.name


def test_the_program_parses_no_invoke_flag():
    assert {arg.name for arg in program.core_args()} == OURS


@pytest.mark.parametrize("flag", ["--echo", "--dry", "--pty", "--write-pyc", "--debug", "--prompt-for-sudo-password"])
def test_invoke_flags_are_unknown_options(sx, flag):
    code, out, err = sx(flag, "runs")
    assert code == 2 and out == ""
    assert err == f"sshexec: unknown option {flag}; see: sshexec --help\n"


def test_no_arguments_prints_the_command_list(sx):
    code, out, err = sx()
    assert code == 0 and err == ""
    assert out == sx("--help")[1]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_for_a_command_either_way(sx, name):
    code, out, err = sx("--help", name)
    assert code == 0 and err == ""
    assert out.startswith(f"Usage: sshexec {name} [OPTIONS]")
    assert inspect.getdoc(ns[name]).splitlines()[0] in out and "Options:" in out
    assert sx(name, "--help") == (0, out, "")
    assert sx(name, "-h") == (0, out, "")
    assert sx(name, "--json", "--help") == (0, out, "")  # eager: a missing RUNBOOK does not hide the help


def test_help_is_whole_however_often_one_process_shows_it(sx):
    # An agent's child serves command after command in one process; invoke's Task.get_arguments hands
    # out each option's help only once (it pops it), which left a second `--help` without any.
    shown = [sx(*argv)[1] for argv in (("run", "--help"), ("--help", "run"), ("run", "-h"), ("check", "--help"), ("check", "--help"))]
    for out in shown[:3]:
        assert "inventory file (default: $SSHEXEC_INVENTORY" in out and "--json" in out, out
    assert shown[3] == shown[4] and "Options:" in shown[4]
    assert all(len(line.split()) > 1 for line in shown[4].split("Options:", 1)[1].splitlines() if line.strip().startswith("-")), shown[4]


def test_command_help_names_its_operands(sx):
    assert sx("--help", "run")[1].startswith("Usage: sshexec run [OPTIONS] RUNBOOK\n")
    assert sx("--help", "logs")[1].startswith("Usage: sshexec logs [OPTIONS] [RUN_ID]\n")  # optional: the latest run
    assert "Exit: 0 ok" in sx("--help", "run")[1]


def test_no_command_uses_the_help_flags():
    for ctx in ns.to_contexts():
        assert "-h" not in ctx.flags and "--help" not in ctx.flags, ctx.name


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["--no-such-flag"], "unknown option --no-such-flag; see: sshexec --help"),
        (["nonsense-command"], "unknown command 'nonsense-command'; see: sshexec --help"),
        (["--help", "nonsense-command"], "unknown command 'nonsense-command'; see: sshexec --help"),
        (["run", "--no-such-flag"], "unknown option --no-such-flag for run; see: sshexec --help run"),
        (["run", "rb.yaml", "--no-such-flag"], "unknown option --no-such-flag for run; see: sshexec --help run"),
        (["run"], "run needs RUNBOOK; see: sshexec --help run"),
        (["run", "--retry-failed"], "run --retry-failed needs RUN_ID (see sshexec runs); see: sshexec --help run"),
        (["run", "a.yaml", "b.yaml"], "unexpected argument 'b.yaml' after run; see: sshexec --help run"),
        (["check", "--worker"], "option --worker needs a value; see: sshexec --help check"),
        (["check", "--parallel", "many"], "option --parallel wants a whole number, not 'many'; see: sshexec --help"),
        (["prepull", "-oProxyCommand=x"], "unknown option -oProxyCommand=x for prepull; see: sshexec --help prepull"),
        (["lab"], "lab needs ACTION; see: sshexec --help lab"),
    ],
)
def test_bad_command_lines_exit_2_with_one_line(sx, argv, line):
    code, out, err = sx(*argv)
    assert (code, out, err) == (2, "", f"sshexec: {line}\n")


def test_hints_repeat_the_inventory_the_person_gave(tmp_path, monkeypatch):
    """A command quoted in a hint, pasted as-is, acts on the same inventory."""
    from sshexec.cli import common
    from sshexec.views import ErrorView, WorkerHealth

    monkeypatch.setattr(common, "_given", {})
    hint = "if that fingerprint is right, run: sshexec trust --worker inner1"
    assert common.repeat_options(hint) == hint  # the default inventory: nothing to repeat
    inv = tmp_path / "my inv.yaml"
    inv.write_text("workers:\n  - {name: w1, host: h}\n")
    common.load_inventory(str(inv))
    assert common.repeat_options(hint) == f"if that fingerprint is right, run: sshexec trust --inventory '{inv}' --worker inner1"
    h = WorkerHealth(worker="w1", address="h", error=ErrorView(error="UnknownHostKey", message="m", hint=hint))
    assert common._repeating(h).error.hint == common.repeat_options(hint)


def test_hints_repeat_the_database_the_person_gave(sx, tmp_path, monkeypatch):
    """A history command quoted in a hint, pasted as-is, reads the same --db (and the db command's own hints are left whole)."""
    from sshexec.cli import common

    monkeypatch.setattr(common, "_given", {})
    monkeypatch.delenv("SSHEXEC_DB", raising=False)
    url = f"sqlite:///{tmp_path / 'other place' / 'history.db'}"
    code, _, err = sx("logs", "nope", "--db", url)
    assert code == 2 and f"see sshexec runs --db '{url}'" in " ".join(err.split()), err
    for hint, want in [
        ("run: sshexec db upgrade --db URL", "run: sshexec db upgrade --db URL"),
        ("sshexec trust --worker w1", "sshexec trust --worker w1"),
        ("to run again: sshexec run --retry-failed R", f"to run again: sshexec run --db '{url}' --retry-failed R"),
        ("sshexec artifact R w1/a.txt", f"sshexec artifact --db '{url}' R w1/a.txt"),
    ]:
        assert common.repeat_options(hint) == want


def test_bad_input_from_a_command_exits_2(sx):
    code, _, err = sx("lab", "sideways")
    assert code == 2 and "unknown lab action" in err
    code, _, err = sx("prepull", "-x")
    assert code == 2 and "unknown option -x" in err and "sshexec --help" in err


def test_version(sx):
    from sshexec import __version__

    assert sx("--version") == (0, f"sshexec {__version__}\n", "")


def test_list_matches_inv_list():
    ours = sx_process("--list").stdout
    inv = subprocess.run([sys.executable, "-m", "invoke", "--list"], capture_output=True, text=True, cwd=REPO, timeout=60).stdout
    names = lambda text: sorted(line.split()[0] for line in text.splitlines() if line[:2] == "  " and line[2:3].strip())  # noqa: E731
    assert names(ours) == names(inv) == sorted(COMMANDS)


def test_completion_candidates(sx):
    def complete(*words):
        code, out, _ = sx("--complete", "--", "sshexec", *words)
        assert code == 0
        return out.split()

    assert set(complete()) == set(complete("")) == COMMANDS
    assert {"--var", "--worker", "--json", "--inventory", "--retry-failed"} <= set(complete("run", "--"))
    assert "--runbook" not in complete("run", "--")  # RUNBOOK is the positional argument, not an option
    assert set(complete("--")) == {f"--{name}" for name in OURS - {"complete"}}
    assert complete("lab", "") == complete("lab", "st") == ["up", "down", "status", "env"]
    assert complete("lab", "up", "") == []  # lab takes one action
    assert complete("token", "") == ["create", "list", "revoke"]
    assert complete("token", "create", "alice", "--role", "") == ["viewer", "operator", "admin"]
    from sshexec.core.status import RUN_STATUSES

    assert complete("runs", "--status", "") == list(RUN_STATUSES)
    assert complete("run", "") == complete("run", "--inventory", "") == []  # a file: the shell completes files
    assert complete("--print-completion-script", "") == ["bash", "zsh", "fish"]


def test_retry_failed_completes_the_run_ids_that_did_not_succeed(sx, tmp_path, monkeypatch):
    """--retry-failed takes RUN_ID: <TAB> offers the newest runs that did not succeed, from the local history
    only if it is there (completing never makes one)."""
    from sshexec.store.history import History

    home = tmp_path / "home"
    monkeypatch.setenv("SSHEXEC_HOME", str(home))
    monkeypatch.delenv("SSHEXEC_DB", raising=False)
    complete = ("--complete", "--", "sshexec", "run", "--retry-failed", "")
    assert sx(*complete)[:2] == (0, "") and not home.exists()
    h = History()
    for i, status in enumerate(("failed", "succeeded", "error")):
        with mock.patch("time.time", return_value=1_700_000_000 + i):
            h.start_run(f"r{i}", "rb", runbook_path="rb.yaml", inventory="inv.yaml", variables={})
        h.finish_run(f"r{i}", status, 0 if status == "succeeded" else 1, None)
    h.close()
    assert sx(*complete)[1].split() == ["r2", "r0"]  # newest first, the succeeded one left out
    monkeypatch.setenv("SSHEXEC_DB", "postgresql://nobody@127.0.0.1:1/none")
    assert sx(*complete)[1] == ""  # a network database is never asked on a <TAB>


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts_call_this_sshexec_by_its_path(sx, shell):
    code, out, _ = sx("--print-completion-script", shell)
    program = str(Path(sys.executable).parent / "sshexec")
    assert code == 0 and f"{program} --complete --" in out and "_complete_sshexec" in out


def bash_complete(tmp_path, lines: list[str], env: dict | None = None) -> list[str]:
    """Each COMP_WORDS line completed by the script `sshexec --print-completion-script bash` prints, in a real bash."""
    script = 'eval "$(.venv/bin/sshexec --print-completion-script bash)"\n'
    for words in lines:
        script += f'COMP_WORDS=({words}); COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 )); _complete_sshexec; echo "${{COMPREPLY[*]}}"\n'
    res = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60, env=env)
    assert res.returncode == 0, res.stderr
    return res.stdout.splitlines()


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_bash_completes_commands_operands_and_options_without_sshexec_on_path(tmp_path):
    """The README's recipe in a real bash, with the program spelt .venv/bin/sshexec and no sshexec on PATH."""
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    assert shutil.which("sshexec", path=env["PATH"]) is None
    lines = bash_complete(tmp_path, ["sshexec pre", "sshexec ru", ".venv/bin/sshexec ''", "sshexec lab ''", "sshexec lab d", "sshexec run --r"], env)
    assert lines[:2] == ["prepull", "run runs"]
    assert set(lines[2].split()) == COMMANDS
    assert lines[3:] == ["up down status env", "down", "--retry-failed"]


def test_readme_shows_the_real_help():
    assert help_block() in README.read_text(), f"README.md's {HELP_BEGIN!r} block is out of date: run .venv/bin/python tests/readme_blocks.py --write"


def test_missing_inventory_says_what_to_do(tmp_path):
    res = subprocess.run([sys.executable, "-m", "sshexec", "check"], capture_output=True, text=True, cwd=tmp_path, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 2
    assert "no inventory at inventory/workers.yaml" in res.stderr and "--inventory" in res.stderr


def test_runs_and_logs_on_an_empty_history(sx):
    code, out, _ = sx("runs", "--json")
    assert code == 0 and out.strip() == "[]"
    code, _, err = sx("logs", "nope")
    assert code == 2 and "no run 'nope'" in err
    code, out, err = sx("logs")
    assert (code, out) == (2, "") and "no run in the history yet" in err and "sshexec run RUNBOOK" in err


def _record_run(h, run_id: str, started: float, line: bytes) -> None:
    with mock.patch("time.time", return_value=started):
        h.start_run(run_id, f"rb-{run_id}", runbook_path="rb.yaml", inventory="inv.yaml", variables={})
    with h.log_writer(run_id) as log:
        log.write(line)
    h.finish_run(run_id, "succeeded", 0, None)


@pytest.mark.parametrize("value, guess", [("bogus", ""), ("faild", "did you mean 'failed'? ")])
def test_runs_with_an_unknown_status_is_bad_input_naming_the_valid_ones(sx, value, guess):
    from sshexec.core.status import RUN_STATUSES

    code, out, err = sx("runs", "--status", value)
    assert (code, out) == (2, "")
    assert f"unknown run status {value!r}: {guess}a run's status is one of {', '.join(RUN_STATUSES)}" in " ".join(err.split())
    assert sx("runs", "--status", "failed", "--json")[:2] == (0, "[]\n")


def test_logs_without_a_run_id_shows_the_latest_run(sx):
    """`sshexec logs` alone: the run `sshexec runs` lists first (the latest started), not the last id."""
    from sshexec.store.history import History

    h = History()
    _record_run(h, "20250101-000000-bbbbbb", 2000.0, b"w1/s | the latest run\n")
    _record_run(h, "20250101-000000-cccccc", 1000.0, b"w1/s | an older run with a later id\n")
    _record_run(h, "20240101-000000-aaaaaa", 1500.0, b"w1/s | the middle run\n")
    code, out, _ = sx("runs", "--json")
    assert json.loads(out)[0]["id"] == "20250101-000000-bbbbbb"
    for argv in (["logs"], ["logs", "20250101-000000-b"], ["logs", "--json"]):
        code, out, err = sx(*argv)
        assert code == 0, (argv, err)
        assert "20250101-000000-bbbbbb" in out and "the latest run" in out, argv
        assert "older run" not in out and "middle run" not in out, argv
    code, out, err = sx("logs", "20240101")  # a prefix still picks its run
    assert code == 0 and "the middle run" in out
    code, _, err = sx("logs", "2025")
    assert code == 2 and "'2025' matches 2 runs" in err
    code, _, err = sx("logs", "--run-id")
    assert code == 2 and "option --run-id needs a value" in err


def test_parallel_comes_from_the_option_the_environment_or_16(monkeypatch):
    from sshexec.cli.common import parallel
    from sshexec.errors import InputError

    monkeypatch.delenv("SSHEXEC_PARALLEL", raising=False)
    assert parallel(0) == parallel(None) == 16
    monkeypatch.setenv("SSHEXEC_PARALLEL", "4")
    assert parallel(0) == 4 and parallel(9) == 9
    monkeypatch.setenv("SSHEXEC_PARALLEL", "many")
    with pytest.raises(InputError, match="SSHEXEC_PARALLEL must be a whole number, not 'many'"):
        parallel(0)
    with pytest.raises(InputError, match="--parallel must be at least 1"):
        parallel(-2)


def test_any_order_comes_from_the_environment(monkeypatch):
    from sshexec.cli.common import any_order
    from sshexec.errors import InputError

    monkeypatch.delenv("SSHEXEC_ANY_ORDER", raising=False)
    assert any_order() == "random"
    monkeypatch.setenv("SSHEXEC_ANY_ORDER", "inventory")
    assert any_order() == "inventory"
    monkeypatch.setenv("SSHEXEC_ANY_ORDER", "sideways")
    with pytest.raises(InputError, match="SSHEXEC_ANY_ORDER must be random or inventory"):
        any_order()


def test_no_setting_is_read_at_import_time():
    code = "import sshexec.core.fanout as f, sshexec.run.runner as r; print(f.DEFAULT_PARALLEL)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60, env={**os.environ, "SSHEXEC_PARALLEL": "3"})
    assert res.stdout.strip() == "16", res.stderr


@pytest.fixture
def small_run(tmp_path):
    """A valid inventory of one worker and a one-step runbook for it (nothing is contacted)."""
    inv = tmp_path / "inv.yaml"
    inv.write_text("workers:\n  - {name: w1, host: 127.0.0.1, pools: [linux]}\n")
    rb = tmp_path / "rb.yaml"
    rb.write_text("name: rb\nsteps:\n  - {name: s, pool: linux, container: {image: busybox}, script: {syntax: sh, inline: 'true'}}\n")
    return rb, inv


def test_run_hands_the_settings_to_the_runner(sx, small_run, monkeypatch):
    """`sshexec run` reads SSHEXEC_PARALLEL and SSHEXEC_ANY_ORDER when it runs, and passes them on."""
    import sshexec.run.runner
    from sshexec.run.result import RunResult

    seen = {}

    class FakeRunner:
        interrupts = 0

        def __init__(self, rb, inv, **kw):
            seen.update(kw)

        def run(self):
            return RunResult("r-1", "rb", "succeeded", 0, 0.0)

    monkeypatch.setattr(sshexec.run.runner, "Runner", FakeRunner)
    rb, inv = small_run
    monkeypatch.setenv("SSHEXEC_PARALLEL", "3")
    monkeypatch.setenv("SSHEXEC_ANY_ORDER", "inventory")
    code, out, err = sx("run", str(rb), "--inventory", str(inv), "--quiet")
    assert code == 0, err
    assert (seen["parallel"], seen["any_order"]) == (3, "inventory")
    assert sx("run", str(rb), "--inventory", str(inv), "--quiet", "--parallel", "5")[0] == 0
    assert seen["parallel"] == 5
    monkeypatch.setenv("SSHEXEC_ANY_ORDER", "sideways")
    code, _, err = sx("run", str(rb), "--inventory", str(inv))
    assert code == 2 and "SSHEXEC_ANY_ORDER must be random or inventory" in err


def test_the_runner_refuses_an_unknown_any_order(small_run):
    from sshexec import Runner, load_inventory, load_runbook

    rb, inv = small_run
    with pytest.raises(ValueError, match="any_order must be one of random, inventory"):
        Runner(load_runbook(rb), load_inventory(inv), any_order="sideways")
    assert Runner(load_runbook(rb), load_inventory(inv), any_order="inventory").any_order == "inventory"


def test_readme_lists_every_environment_variable():
    """Each SSHEXEC_* name the operator-side code reads has a row in the README's table."""
    import re

    code = [p for p in (REPO / "sshexec").rglob("*.py") if "executor" not in p.parts and "runbooks" not in p.parts]  # runbooks: scripts in containers
    read = {m for p in code for m in re.findall(r"[\"'](SSHEXEC_[A-Z0-9_]+)[\"']", p.read_text())}
    table = README.read_text().split("## Environment variables", 1)[1].split("\n## ", 1)[0]
    rows = set(re.findall(r"^\| `(SSHEXEC_[A-Z0-9_]+)` \|", table, re.M))
    assert read, "found no SSHEXEC_ variable in the code: the pattern is wrong"
    assert read <= rows, f"not in the README's environment table: {sorted(read - rows)}"
    assert {"SSHEXEC_PARALLEL", "SSHEXEC_ANY_ORDER", "SSHEXEC_HOME", "SSHEXEC_INVENTORY"} <= rows
