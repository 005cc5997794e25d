"""The command line: parse errors, help, exit codes (no workers contacted)."""

import os
import subprocess
import sys

from labkit import REPO


def sx(*args, **kw):
    return subprocess.run([sys.executable, "-m", "sshexec", *args], capture_output=True, text=True, cwd=REPO, timeout=60, **kw)


def test_list_matches_inv_list():
    ours = sx("--list").stdout
    inv = subprocess.run([sys.executable, "-m", "invoke", "--list"], capture_output=True, text=True, cwd=REPO, timeout=60).stdout
    names = lambda text: sorted(line.split()[0] for line in text.splitlines() if line.startswith("  ") and line.strip())  # noqa: E731
    assert names(ours) == names(inv)
    assert {"check", "trust", "run", "runs", "logs", "prepull", "lab", "demo"} <= set(names(ours))


def test_help_explains_each_command():
    for cmd in ("check", "trust", "run", "prepull", "lab", "logs"):
        out = sx("--help", cmd).stdout
        assert "Usage:" in out and "Options:" in out, cmd
    assert "Exit: 0 ok" in sx("--help", "run").stdout


def test_bad_arguments_exit_2():
    for args in (("run", "--no-such-flag"), ("run", "rb.yaml", "--no-such-flag"), ("--no-such-flag",)):
        res = sx(*args)
        assert res.returncode == 2 and "sshexec --help" in res.stderr, args
    res = sx("nonsense-command")
    assert res.returncode == 2
    res = sx("run")
    assert res.returncode == 2 and "required positional arguments: 'runbook'" in res.stderr
    res = sx("lab", "sideways")
    assert res.returncode == 2 and "unknown lab action" in res.stderr


def test_missing_inventory_says_what_to_do(tmp_path):
    res = subprocess.run([sys.executable, "-m", "sshexec", "check"], capture_output=True, text=True, cwd=tmp_path, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 2
    assert "no inventory at inventory/workers.yaml" in res.stderr and "--inventory" in res.stderr


def test_runs_and_logs_on_an_empty_history():
    assert sx("runs", "--json").stdout.strip() == "[]"
    res = sx("logs", "nope")
    assert res.returncode == 2 and "no run 'nope'" in res.stderr
