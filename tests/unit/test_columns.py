"""Issue 23's "80 columns": what the program shows, rendered at a terminal of 80 columns (fakes, no lab).

For each of check, runs, locks, lab status, the run summary and every --help: no line is
longer than 80; run ids, copyable commands and paths stand whole on one line; headers are
whole. tests/integration/test_first_hour.py runs the real commands against the lab in a
real 80-column pseudo-terminal.
"""

from __future__ import annotations

import io
import re
import time
from types import SimpleNamespace

import pytest
from rich.console import Console

from sshexec.cli import ns, program, ui
from sshexec.errors import InputError
from sshexec.run.result import RunResult
from sshexec.step.artifacts import Artifact
from sshexec.step.result import StepResult
from sshexec.store.history import RunRecord
from sshexec.views import ErrorView, WorkerHealth

RUN_ID = "20261203-065512-a1b2c3"
LONG_PATH = "/srv/deploy/releases/2026-12-03/inventory/production-eu-west.yaml"


class Terminal:
    """ui's two consoles replaced by 80-column terminals that write into strings."""

    def __init__(self, width: int = 80):
        self.width = width
        self.out, self.err = io.StringIO(), io.StringIO()

    def console(self, file):
        return Console(file=file, width=self.width, force_terminal=True, color_system=None, highlight=False, emoji=False, soft_wrap=False)

    @property
    def text(self) -> str:
        return self.out.getvalue() + self.err.getvalue()


@pytest.fixture
def term(monkeypatch):
    t = Terminal()
    monkeypatch.setattr(ui, "_console", t.console(t.out))
    monkeypatch.setattr(ui, "_err_console", t.console(t.err))
    monkeypatch.setenv("COLUMNS", "80")
    return t


def lines_of(text: str) -> list[str]:
    return text.splitlines()


def assert_fits(text: str, width: int = 80) -> None:
    long = [line for line in lines_of(text) if len(line) > width]
    assert not long, "lines longer than %d:\n%s" % (width, "\n".join(long))


def whole_on_a_line(text: str, needle: str) -> bool:
    return any(needle in line for line in lines_of(text))


def header_line(text: str, first: str) -> str:
    return next(line for line in lines_of(text) if line.split()[:1] == [first])


# -- check ------------------------------------------------------------------------------------


def health(name: str, **kw) -> WorkerHealth:
    ok = dict(ssh=True, host_key=True, docker_cli=True, daemon=True, permission=True, version="20.10.24+dfsg1", platform="linux/amd64",
              free_bytes=80 << 30, work_root="/home/deploy/.sshexec", endpoint="unix:///var/run/docker.sock", daemon_id="L7II:4COD:3YIS:AAAA",
              daemon_name=name, docker_root="/var/lib/docker", docker_free_bytes=70 << 30)  # fmt: skip
    return WorkerHealth(**{"worker": name, "address": "127.0.0.1:32774", **ok, **kw})


CHECKED = [
    health("w1"),
    health("build-server-eu-01", address="build-server-eu-01.example.com:2222"),
    health("bastion", docker_required=False, docker_cli=None, daemon=None, permission=None, version=None, free_bytes=None),
    health("w4", ssh=False, host_key=None, docker_cli=None, daemon=None, version=None, free_bytes=None, error=ErrorView(
        error="UnreachableError", message="w4: cannot reach 127.0.0.1:2298: the port sent no SSH banner within 10s (connect_timeout)",
        hint=f"check that sshd runs there, then: sshexec check --inventory {LONG_PATH} --worker w4")),
]  # fmt: skip


def test_check_fits_80_columns_with_each_problem_whole_below(term):
    from sshexec.cli import health as shown

    shown.compact(CHECKED)
    text = term.out.getvalue()
    assert_fits(text)
    head = header_line(text, "worker")
    assert head.split() == ["worker", "address", "status", "docker", "free", "problem"]  # headers whole
    rows = lines_of(text)[3:7]  # one line per worker
    assert [row.split()[0] for row in rows] == ["w1", "build-server-eu-01", "bastion", "w4"], text
    assert "unreachable" in rows[3] and "20.10.24" in rows[0]
    assert "127.0.0.1:32774" in rows[0] and ":2222" in rows[1]  # an address is cut only if it must, and keeps its port
    # the problem in full below the table, broken between words, the command in it whole
    said = " ".join(text.split())
    assert "w4: cannot reach 127.0.0.1:2298: the port sent no SSH banner within 10s (connect_timeout)" in said
    assert whole_on_a_line(text, LONG_PATH)
    assert "bastion: a jump host" in text


def test_check_wide_has_every_check_and_the_daemon(capsys):
    from sshexec.cli import health as shown

    shown.wide(CHECKED[:1])  # off a terminal: as wide as it is
    text = capsys.readouterr().out
    for header in ("ssh", "permission", "platform", "slots"):
        assert header in text
    assert "unix:///var/run/docker.sock" in text


def test_check_wide_at_a_narrow_terminal_is_a_few_lines_per_worker(term):
    from sshexec.cli import health as shown

    shown.wide(CHECKED)
    text = term.out.getvalue()
    assert_fits(text)
    assert "┃" not in text  # no table crushed into columns of three characters
    for whole in ("unix:///var/run/docker.sock · w1 L7II:4COD:3YIS", "version 20.10.24+dfsg1 · linux/amd64", "permission ✓", "build-server-eu-01.example.com:2222"):
        assert whole_on_a_line(text, whole), whole


# -- runs -------------------------------------------------------------------------------------


def record(i: int, **kw) -> RunRecord:
    now = time.time()
    base = dict(id=f"20261203-0655{i:02d}-a1b2c{i % 10}", runbook="deploy-web-frontend-to-every-region", started=now - 600, finished=now - 480,
                status="failed", exit_code=1, message="build on w2: script exited with code 1: make: *** [Makefile:12: all] Error 2 " * 2,
                pid=1, host="h")  # fmt: skip
    return RunRecord(**{**base, **kw})


def test_runs_never_cut_the_run_id_and_keep_one_line_per_run(term, monkeypatch):
    from sshexec.cli import common

    records = [record(i) for i in range(20)] + [record(20, status="interrupted", finished=None, exit_code=None, message=None, runbook="x")]
    monkeypatch.setattr(common, "history", lambda *a, **k: SimpleNamespace(runs=lambda *a, **k: records))
    assert program.run(["sshexec", "runs"], exit=False) == 0
    text = term.out.getvalue()
    assert_fits(text)
    assert header_line(text, "run").split() == ["run", "id", "runbook", "started", "time", "status", "message"]
    for r in records:
        assert whole_on_a_line(text, r.id), r.id
    assert len(lines_of(text)) == 3 + len(records), text  # title, headers, rule, then a line a run
    assert "…" in text  # the messages cut, not wrapped


# -- locks ------------------------------------------------------------------------------------


def test_locks_keep_the_holder_and_the_headers_whole(term):
    from sshexec.cli.coord import _locks_table

    now = time.time()
    owner = SimpleNamespace(run=RUN_ID, operator="a-long-operator-name@build-host.example.com", pid=123456, since=now - 90)
    lock = SimpleNamespace(lock="deploy-production", owner=owner, beat=SimpleNamespace(since=now - 5, stale=60), beat_unknown=False, stale=False)
    slot = SimpleNamespace(index=1, owner=owner, alive=True)
    held = SimpleNamespace(now=now, locks=[lock], slots=[slot], slots_used=1, max_steps=2)
    empty = SimpleNamespace(now=now, locks=[], slots=[], slots_used=0, max_steps=None)
    _locks_table([(SimpleNamespace(name="w1"), held), (SimpleNamespace(name="w2"), empty)])
    text = term.out.getvalue()
    assert_fits(text)
    assert header_line(text, "worker").split() == ["worker", "name", "holder", "since", "state", "operator"]
    rows = [line for line in lines_of(text) if line.startswith("w1 ")]
    assert len(rows) == 2 and all(RUN_ID in row for row in rows), text  # the lock's and the slot's holder, whole
    assert "deploy-production" in rows[0] and "slot 1 (1/2)" in rows[1]
    # the operator, cut in the table, in full below it
    assert whole_on_a_line(text, "a-long-operator-name@build-host.example.com pid 123456")


# -- lab status -------------------------------------------------------------------------------


def lab_status():
    workers = [SimpleNamespace(name=n, role=r, container=f"sshexec-lab-{n}", port=p, running=True, work_root=None if r == "bastion" else f"/var/lib/sshexec-lab/work/{n}")
               for n, r, p in (("w1", "worker", 32774), ("w2", "worker", 32771), ("bastion", "bastion", 32772), ("inner1", "internal", None))]  # fmt: skip
    daemons = [SimpleNamespace(worker=w.name, pid=24563, bridge="sxd14842656", subnet="10.207.101.0/24", running=True) for w in workers if w.role != "bastion"]
    return SimpleNamespace(daemon="external (not managed by the lab)", shared_daemon=False, registry="up (pid 24364)", registry_address="127.0.0.1:5000",
                           inventory="/root/sshexec/inventory/lab.yaml", workers=workers, daemons=daemons)  # fmt: skip


def test_lab_status_keeps_addresses_and_containers_whole(term):
    from sshexec.cli.lab import _show_status

    _show_status(lab_status(), json=False)
    text = term.out.getvalue()
    assert_fits(text)
    for whole in ("127.0.0.1:32774", "127.0.0.1:32771", "inner1:22 via bastion", "sshexec-lab-bastion", "sshexec-lab-inner1", "/root/sshexec/inventory/lab.yaml"):
        assert whole_on_a_line(text, whole), whole
    assert header_line(text, "worker").split() == ["worker", "container", "address", "state", "docker", "daemon"]


def test_lab_status_off_a_terminal_is_80_columns_not_190(monkeypatch, capsys):
    from sshexec.cli.lab import _show_status

    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setattr(ui, "_console", None)  # made again, for a stdout that is not a terminal
    try:
        _show_status(lab_status(), json=False)
    finally:
        ui._console = None
    assert_fits(capsys.readouterr().out)


# -- the run summary ------------------------------------------------------------------------------


def test_the_run_summary_keeps_ids_commands_and_paths_whole(term):
    from sshexec.cli.runs import RunView

    steps = [
        StepResult("build", "w1", "succeeded", 0, 2.5, artifacts=(Artifact("app-1.4.2-linux-amd64.tar.gz", 123456),)),
        StepResult("deploy", "build-server-eu-01", "failed", 1, 75.0, message="script exited with code 1: rsync: change_dir "
                   f"\"{LONG_PATH}\" failed: No such file or directory (2)", attempt=2, attempts=3),
    ]  # fmt: skip
    result = RunResult(RUN_ID, "deploy-web", "failed", 1, 80.0, steps=steps)
    view = RunView.__new__(RunView)
    view.summary(result)
    text = term.out.getvalue()
    assert_fits(text)
    assert header_line(text, "step").split() == ["step", "worker", "status", "exit", "time", "message"]
    for whole in (f"sshexec run --retry-failed {RUN_ID}", f"sshexec artifact {RUN_ID} w1/app-1.4.2-linux-amd64.tar.gz",
                  f"sshexec logs {RUN_ID}", LONG_PATH, f"run {RUN_ID}: deploy-web"):  # fmt: skip
        assert whole_on_a_line(text, whole), whole
    said = " ".join(text.split())  # the cut message in full below the table
    assert f'deploy on build-server-eu-01: script exited with code 1: rsync: change_dir "{LONG_PATH}" failed' in said


# -- lines of text ---------------------------------------------------------------------------------


def test_error_lines_break_between_words_under_their_own_text(term):
    ui.error(InputError(f"the runbook {LONG_PATH} has 3 problems: a pool, a feed and a script file are unknown", hint=f"sshexec check --inventory {LONG_PATH}"))
    text = term.err.getvalue()
    assert_fits(text)
    lines = lines_of(text)
    assert lines[0].startswith("error: ") and all(line.startswith("       ") for line in lines[1:-2])
    assert whole_on_a_line(text, LONG_PATH) and "→" in text
    words = set(re.findall(r"\S+", f"the runbook {LONG_PATH} has 3 problems: a pool, a feed and a script file are unknown"))
    assert words <= set(text.split()), "a word was broken"


def test_dry_run_continuation_lines_keep_their_indent(term, monkeypatch):
    from sshexec.cli import runs
    from sshexec.run import dryrun

    plan_lines = ["plan of deploy (rb.yaml) with inv.yaml: nothing was contacted", "", "1. deploy-everything-everywhere   if: success · target: each · pool production-eu-west",
                  "   image 127.0.0.1:5000/sshexec/tools-with-a-long-name:1.2.3 · pull if-not-present · feed lab (127.0.0.1:5000) · user image · bash · timeout 3600s"]  # fmt: skip
    monkeypatch.setattr(dryrun, "render", lambda plan: plan_lines)
    monkeypatch.setattr(runs.common, "parallel", lambda n: 1)
    monkeypatch.setattr(runs.common, "any_order", lambda: "random")
    import sshexec.run.runner as runner

    monkeypatch.setattr(runner, "Runner", lambda *a, **k: SimpleNamespace(plan=lambda: {}))
    runs.run_runbook(None, None, dry_run=True)
    text = term.out.getvalue()
    assert_fits(text)
    lines = lines_of(text)
    step = lines.index(next(line for line in lines if line.startswith("1. ")))
    assert lines[step + 1].startswith("   ") and not lines[step + 1].startswith("    ")  # under "deploy-everything..."
    image = lines.index(next(line for line in lines if line.startswith("   image")))
    assert lines[image + 1].startswith("     ") and lines[image + 1].strip()  # under "image"


def test_the_lock_wait_is_said_whole_once(term):
    from sshexec.cli.runs import RunView

    view = RunView.__new__(RunView)
    view.live = ui.LiveProgress(False)
    view.waits, view._lock = set(), __import__("threading").Lock()
    text = f"waiting for lock deploy-production on build-server-eu-01, held by run {RUN_ID} (a-long-operator-name@build-host pid 123456, since 10:02)"
    view.event("lock-wait", "build-server-eu-01", text)
    view.event("lock-wait", "build-server-eu-01", text)
    out = term.err.getvalue()
    assert_fits(out)
    assert " ".join(out.split()) == text  # once, every word of it
    assert whole_on_a_line(out, RUN_ID)


# -- --help -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("columns", ["80", "200", "60"])
def test_every_help_fits_80_columns(capsys, monkeypatch, columns):
    monkeypatch.setenv("COLUMNS", columns)
    width = min(int(columns), 80)
    for argv in [["--help"], *(["--help", name] for name in ns.task_names)]:
        assert program.run(["sshexec", *argv], exit=False) == 0
        out = capsys.readouterr().out
        long = [line for line in out.splitlines() if len(line) > width and " " in line.strip()]
        assert not long, (argv, long)
        assert "=STRING" not in out and "STRING" not in out and " INT" not in out, argv


def test_help_shows_operands_as_operands_and_values_by_name(capsys):
    program.run(["sshexec", "--help", "run"], exit=False)
    out = capsys.readouterr().out
    assert out.startswith("Usage: sshexec run [OPTIONS] RUNBOOK\n       sshexec run --retry-failed RUN_ID")
    assert "--runbook" not in out and "\n  RUNBOOK " in out.split("Arguments:")[1]
    for shown in ("--lock-wait SECONDS", "-v, --var NAME=VALUE", "--retry-failed RUN_ID", "-i, --inventory PATH", "--db URL", "--artifact-max SIZE"):
        assert shown in out, shown
    program.run(["sshexec", "--help", "gc"], exit=False)
    gc = capsys.readouterr().out
    assert "--keep-free SIZE" in gc and "--older-than DAYS" in gc and "--pool POOL" in gc


# -- prepull --------------------------------------------------------------------------------------


def test_prepull_fits_and_gives_its_advice_once_naming_feed(term):
    """Messages 4: without --feed, one piece of advice for every worker it concerns, naming --feed NAME."""
    from sshexec.cli.workers import _prepull_table

    image = "127.0.0.1:5000/sshexec/tools:1"
    def denied(w):
        return SimpleNamespace(message=f"{w}: the registry refused to serve {image} (authentication required)",
                               hint="set container.feed in the runbook to a feed with credentials for that registry")  # fmt: skip

    results = [SimpleNamespace(worker=w, ok=False, error=denied(w), duration=0.4, image_id=None) for w in ("w1", "w2", "build-server-eu-01")]
    results.append(SimpleNamespace(worker="w3", ok=True, error=None, duration=12.5, image_id="sha256:0123456789abcdef0123"))
    _prepull_table(image, results, feed=None)
    text = term.out.getvalue()
    assert_fits(text)
    said = " ".join(text.split())
    assert said.count("give a feed with credentials for that registry") == 1, text
    assert f"w1, w2, build-server-eu-01: give a feed with credentials for that registry: sshexec prepull {image} --feed NAME" in said
    assert "container.feed" not in said
    assert "w1: w1:" not in said and "w2: w2:" not in said  # each worker named once (its error names it already)
    assert whole_on_a_line(text, f"sshexec prepull {image} --feed NAME")


def test_a_command_in_a_hint_is_never_broken_when_it_fits_a_line(term):
    command = "sshexec trust --worker inner1 --inventory /srv/deploy/production.yaml"
    ui.error(InputError("inner1: the host key of inner1 (behind bastion) is not in known_hosts", hint=f"compare its fingerprint, then run: {command}; then try again"))
    ui.error(InputError("inner1: the host key of bastion is unknown", hint=f"if that fingerprint is right, run: {command} (it offers the key of every hop)"))
    text = term.err.getvalue()
    assert_fits(text)
    assert sum(command in line for line in lines_of(text)) == 2, text


def test_a_message_of_several_lines_keeps_each_line_and_its_indent(term):
    problems = "\n".join([
        "2 problems in /srv/deploy/runbooks/release-of-the-web-frontend.yaml:",
        "  /srv/deploy/runbooks/release-of-the-web-frontend.yaml:4 steps[build].pool: unknown pool 'linxu': did you mean 'linux'?",
        "    → pools in the inventory: internal, linux",
        "  /srv/deploy/runbooks/release-of-the-web-frontend.yaml:7 steps[build].timeout: timeout must be seconds (90) or a duration with a unit (90s, 5m, 1h), not '5x'",
    ])  # fmt: skip
    ui.error(InputError(problems))
    lines = lines_of(term.err.getvalue())
    assert_fits("\n".join(lines))
    starts = [line for line in lines if "release-of-the-web-frontend.yaml:" in line and "steps[build]" in line]
    assert len(starts) == 2 and all(line.startswith("  /srv/") for line in starts), lines  # each problem on a line of its own
    assert any(line.startswith("    → pools in the inventory") for line in lines)
    after = lines[lines.index(starts[0]) + 1]
    assert after.startswith("    ") and "mean 'linux'?" in " ".join(lines)  # it goes on under its own text


def test_a_parse_error_at_a_terminal_keeps_its_pointer_to_the_help_whole(term):
    assert program.run(["sshexec", "run", "--retry-failed"], exit=False) == 2
    text = term.err.getvalue()
    assert_fits(text)
    assert whole_on_a_line(text, "sshexec --help run") and whole_on_a_line(text, "see sshexec runs")


@pytest.mark.parametrize("width", [60, 50])
def test_a_narrower_terminal_drops_columns_before_it_cuts_an_id(monkeypatch, width):
    """Below 80 columns, the least needed columns go (started, time; since; docker, free) so that
    run ids, holders, containers and addresses stay whole."""
    from sshexec.cli import common, health
    from sshexec.cli.coord import _locks_table
    from sshexec.cli.lab import _show_status

    t = Terminal(width)
    monkeypatch.setattr(ui, "_console", t.console(t.out))
    monkeypatch.setattr(ui, "_err_console", t.console(t.err))
    records = [record(i) for i in range(3)]
    monkeypatch.setattr(common, "history", lambda *a, **k: SimpleNamespace(runs=lambda *a, **k: records))
    assert program.run(["sshexec", "runs"], exit=False) == 0
    now = time.time()
    owner = SimpleNamespace(run=RUN_ID, operator="op@host", pid=1, since=now - 90)
    lock = SimpleNamespace(lock="deploy", owner=owner, beat=SimpleNamespace(since=now - 5, stale=60), beat_unknown=False, stale=False)
    _locks_table([(SimpleNamespace(name="w1"), SimpleNamespace(now=now, locks=[lock], slots=[], slots_used=0, max_steps=None))])
    lab = ["sshexec-lab-bastion", "inner1:22 via bastion"] if width >= 60 else []  # worker, container and address alone take 51
    if lab:
        _show_status(lab_status(), json=False)
    health.compact([CHECKED[0], CHECKED[2]])  # w1 and bastion, as in the lab
    text = t.out.getvalue()
    assert_fits(text, width)
    for whole in [r.id for r in records] + [RUN_ID, "127.0.0.1:32774", *lab]:  # the address: free and docker go first
        assert whole_on_a_line(text, whole), (whole, text)


def test_every_command_s_docstring_is_written_for_80_columns():
    """The help is wrapped anyway; written to fit, its lines break where the writer chose."""
    import inspect

    for name in ns.task_names:
        long = [line for line in (inspect.getdoc(ns[name]) or "").splitlines() if len(line) + 2 > 80]
        assert not long, (name, long)
