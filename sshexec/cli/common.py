"""What several commands share: argument checks, help strings, the inventory, the health table.

Nothing here imports a command module, and the library is imported only when
a command runs, so `sshexec --help` stays fast.
"""

from __future__ import annotations

import os
import sys

from invoke import Exit

from ..errors import InputError
from . import ui

HELP_INVENTORY = "inventory file (default: $SSHEXEC_INVENTORY or inventory/workers.yaml)"
HELP_JSON = "print machine-readable JSON instead of tables"
HELP_POOL = "only workers of this pool"
HELP_WORKER = "only this worker"
HELP_PARALLEL = "how many workers at once (default: $SSHEXEC_PARALLEL, else 16)"
HELP_DB = "the history's database: sqlite:///PATH or postgresql://USER@HOST:PORT/DB (default: $SSHEXEC_DB, else $SSHEXEC_HOME/history.db)"
HELP_DB_PASSWORD_FILE = "a file (mode 0600) holding PostgreSQL's password alone; else PGPASSWORD or PGPASSFILE. Never in the URL"
DB_HELP = {"db": HELP_DB, "db-password-file": HELP_DB_PASSWORD_FILE}


def short(v: str, n: int = 200) -> str:
    """A value on one line, cut at `n` characters."""
    v = v.replace("\n", "\\n")
    return v if len(v) <= n else v[:n] + "…"


def positional(value: str | None, what: str, usage: str) -> str:
    """A required positional argument; a flag in its place is a typo, not a file name."""
    if not value:
        raise InputError(f"{what} is missing: {usage}")
    if value.startswith("-"):
        raise InputError(f"unknown option {value}", hint=f"usage: {usage}; see sshexec --help")
    return value


def optional_operands(*names: str):
    """Lets a task's positional arguments `names` be left out (invoke has none such): the task then gets ""."""

    def mark(t):
        t.optional_operands = names
        return t

    return mark


def operand_unless(**options: str):
    """Lets a task's positional argument be left out when an option is given (run's RUNBOOK with --retry-failed)."""

    def mark(t):
        t.operand_unless = options
        return t

    return mark


def more_usage(*lines: str):
    """Other ways to call a task, shown under its Usage line in --help."""

    def mark(t):
        t.more_usage = lines
        return t

    return mark


def parallel(value: int | None = None) -> int:
    """--parallel if given (invoke's default for it is 0), else $SSHEXEC_PARALLEL, else the library's 16."""
    from ..core.fanout import DEFAULT_PARALLEL

    source, text = "--parallel", str(value)
    if not value:
        source, text = "SSHEXEC_PARALLEL", os.environ.get("SSHEXEC_PARALLEL", "")
        if not text:
            return DEFAULT_PARALLEL
    try:
        n = int(text)
    except ValueError:
        raise InputError(f"{source} must be a whole number, not {text!r}") from None
    if n < 1:
        raise InputError(f"{source} must be at least 1, not {n}")
    return n


def seconds(value: str | None, option: str) -> float:
    """A time given as an option (default 0): seconds, or 90s, 5m, 1h; InputError (exit 2) otherwise."""
    from ..core.duration import parse_duration

    if value in (None, ""):
        return 0.0
    try:
        return parse_duration(value, option)
    except ValueError as exc:
        raise InputError(str(exc)) from None


def _repeating(h):
    """A worker's health whose hint repeats the person's options (repeat_options)."""
    if h.error is None or not h.error.hint:
        return h
    return h.model_copy(update={"error": h.error.model_copy(update={"hint": repeat_options(h.error.hint)})})


def any_order() -> str:
    """How `target: any` picks a worker: $SSHEXEC_ANY_ORDER, "random" (default) or "inventory"."""
    from ..run.runner import ANY_ORDERS

    order = os.environ.get("SSHEXEC_ANY_ORDER") or "random"
    if order not in ANY_ORDERS:
        raise InputError(f"SSHEXEC_ANY_ORDER must be {' or '.join(ANY_ORDERS)}, not {order!r}")
    return order


def database(db: str | None = None, password_file: str | None = None):
    """The history's database (--db, else $SSHEXEC_DB, else the SQLite default), checked now:
    a bad URL is exit 2, an unreachable or un-upgraded database exit 3, before anything else happens."""
    from ..store.db import opened

    if db:
        _given["--db"] = db
    if password_file:
        _given["--db-password-file"] = password_file
    return opened(db, password_file=password_file)


def audit(action: str, *, target: str | None = None, detail: dict | None = None, db: str | None = None, password_file: str | None = None) -> None:
    """One entry of the audit trail (store/audit.py) for what this command line just did, as the local user.

    A database that cannot take it costs a warning, never the action (unlock and gc act on workers, not on it)."""
    from ..errors import SshexecError
    from ..store.audit import AuditLog, local_actor

    who, source = local_actor()
    try:
        AuditLog(database(db, password_file)).record(action, who=who, source=source, target=target, detail=detail)
    except SshexecError as exc:
        ui.warn(f"the audit trail could not record {action}: {exc.message}")


def history(db: str | None = None, password_file: str | None = None):
    from ..store.history import History

    return History(database(db, password_file))


# Options the person gave that a command quoted in a hint must repeat: pasted as-is, a
# `sshexec trust --worker W` without them would act on another inventory, a `sshexec logs
# RUN_ID` on another history. Each matters to the commands named beside it.
_given: dict[str, str] = {}
_MATTERS = {
    "--inventory": "trust|check|locks|unlock|gc|prepull",
    "--db": "runs|logs|artifact|run|history",  # not `db`: its hints name --db themselves
    "--db-password-file": "runs|logs|artifact|run|history",
}


def load_inventory(path: str | None):
    """The inventory at `path` (or the default one); InputError with file:line:field if bad."""
    from ..config.inventory import load_inventory as load

    if path:
        _given["--inventory"] = path
    return load(path)


def forget_options() -> None:
    """A new command line: nothing given yet, and nothing of what the last one's tables showed is kept."""
    _given.clear()
    tables = sys.modules.get(f"{__package__}.tables")  # not imported for it: a command that drew no table has nothing to forget
    if tables is not None:
        tables.cell_width.cache_clear()


def repeat_options(text: str | None) -> str | None:
    """`text` (a hint) with each sshexec command it quotes given the options that matter to it (--inventory, --db)."""
    if not text or not _given:
        return text
    import re
    import shlex

    for option, value in _given.items():
        text = re.sub(rf"\bsshexec ({_MATTERS[option]})\b", lambda m: f"{m[0]} {option} {shlex.quote(value)}", text)
    return text


def docker_workers(inv, pool: str | None = None, worker: str | None = None) -> list:
    """The workers a Docker verb (prepull, gc, locks) acts on: a worker in no pool is a jump host,
    with nothing of sshexec's on it and maybe no Docker, so it is left out unless named with --worker."""
    return [w for w in inv.select(pool=pool, worker=worker) if w.pools or worker]


def check_workers(workers, *, at_once: int | None = None) -> list:
    """The health of each worker (ops/check.py), `at_once` at a time (see parallel()), in the workers' order."""
    from ..core.fanout import fan_out
    from ..ops.check import check_worker

    results = fan_out(workers, check_worker, parallel=parallel(at_once))
    healths = list(results.values())
    for h in healths:
        if isinstance(h, BaseException):
            raise h  # check_worker reports worker problems in its result: this is a bug or Ctrl-C
    return healths


def show_health(healths: list, *, json: bool, wide: bool = False) -> None:
    """The health table, compact or --wide (or JSON); Exit 3 unless every worker is healthy."""
    healthy = all(h.healthy for h in healths)
    if json:
        from ..views import HealthReport

        report = HealthReport(healthy=healthy, workers=healths)
        ui.print_json(report.model_dump(exclude={"checked_at", "age"}))
    else:
        from . import health

        (health.wide if wide else health.compact)([_repeating(h) for h in healths])
    if not healthy:
        raise Exit(code=3)


def local_user() -> str:
    """Who runs this command, as the history records it."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def count(value, option: str, *, most: int = 1000) -> int:
    """A whole number from 1 to `most` given as an option; InputError (exit 2) otherwise."""
    try:
        n = int(str(value))
    except ValueError:
        raise InputError(f"{option} must be a whole number, not {value!r}") from None
    if not 1 <= n <= most:
        raise InputError(f"{option} must be from 1 to {most}, not {n}")
    return n
