"""The `sshexec` program and `inv` tasks: parse, call the library, show the result.

No logic of its own lives here; every task is a thin layer over a library call.
"""

from __future__ import annotations

import logging
import sys

from invoke import Collection, Exit, ParseError, Program, task

from . import __version__, ui
from .errors import InputError, SshexecError, exit_code_for

HELP_INVENTORY = "inventory file (default: $SSHEXEC_INVENTORY or inventory/workers.yaml)"
HELP_JSON = "print machine-readable JSON instead of tables"


def positional(value: str | None, what: str, usage: str) -> str:
    """A required positional argument; a flag in its place is a typo, not a file name."""
    if not value:
        raise InputError(f"{what} is missing: {usage}")
    if value.startswith("-"):
        raise InputError(f"unknown option {value}", hint=f"usage: {usage}; see sshexec --help")
    return value


def _inventory(path):
    from .inventory import load_inventory

    return load_inventory(path)


@task(
    help={
        "pool": "only workers of this pool",
        "worker": "only this worker",
        "inventory": HELP_INVENTORY,
        "json": HELP_JSON,
        "parallel": "how many workers to check at once (default 16)",
    }
)
def check(c, pool=None, worker=None, inventory=None, json=False, parallel=16):
    """Check that each worker is reachable and can run containers.

    For every selected worker: SSH reachable, host key known, docker CLI
    present, daemon reachable, permission to use it, server version, platform
    and free disk in work_root. Exit 0 only if all are healthy, 3 otherwise.
    """
    from .fleet import fan_out
    from .health import check_worker

    inv = _inventory(inventory)
    workers = inv.select(pool=pool, worker=worker)
    results = fan_out(workers, lambda w: check_worker(w), parallel=int(parallel))
    healths = list(results.values())
    for h in healths:
        if isinstance(h, BaseException):
            raise h
    if json:
        ui.print_json({"healthy": all(h.healthy for h in healths), "workers": [h.to_dict() for h in healths]})
    else:
        ui.health_table(healths)
    if not all(h.healthy for h in healths):
        raise Exit(code=3)


@task(
    help={
        "worker": "the worker whose host key to trust (required)",
        "yes": "do not ask: add the key",
        "replace": "replace a different key already in known_hosts (after a reinstall)",
        "inventory": HELP_INVENTORY,
        "json": HELP_JSON,
    }
)
def trust(c, worker=None, yes=False, replace=False, inventory=None, json=False):
    """Show the host key of every hop to a worker (jump hosts first) and add the ones you confirm.

    Keys already in known_hosts pass silently; each unknown key is shown with its
    fingerprint and added once confirmed (--yes: without asking). A changed key
    is refused unless --replace is given. Compare each fingerprint with the one
    the machine's console shows (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub)
    before saying yes.
    """
    from .trust import trust_worker

    if not worker:
        raise InputError("trust needs --worker NAME")
    w = _inventory(inventory).worker(worker)
    if not yes and not sys.stdin.isatty():
        raise InputError("not confirmed: run with --yes to add the keys without asking")

    def confirm(hk) -> bool:
        if not json:
            verb = "now offers" if hk.status == "changed" else "offers"
            ui.info(f"{hk.what} {verb} {hk.key.get_name()} {hk.fingerprint}" + (f" (known_hosts has {', '.join(hk.known)})" if hk.known else ""))
        if yes:
            return True
        answer = input(f"{'Replace' if hk.status == 'changed' else 'Add'} this key in {w.known_hosts}? [y/N] ").strip().lower()
        return answer in ("y", "yes")

    keys = trust_worker(w, confirm, replace=replace)
    if json:
        ui.print_json({"worker": w.name, "known_hosts": str(w.known_hosts), "hops": [k.to_dict() for k in keys],
                       "fingerprint": keys[-1].fingerprint, "added": any(k.added for k in keys)})  # fmt: skip
        return
    for k in keys:
        if k.added:
            ui.info(f"{k.what}: added to {w.known_hosts}" + (" (replacing the old key)" if k.status == "changed" else ""))
        else:
            ui.info(f"{k.what}: {k.key.get_name()} {k.fingerprint} already in {w.known_hosts}")


def build_collection() -> Collection:
    ns = Collection()
    for t in (check, trust):
        ns.add_task(t)
    from . import cli_lab, cli_run

    for t in cli_run.TASKS + cli_lab.TASKS:
        ns.add_task(t)
    return ns


class SshexecProgram(Program):
    """invoke's Program with sshexec's exit codes and error messages."""

    def task_args(self):
        return []  # our tasks do not run local shell commands: hide --echo, --pty & co.

    def run(self, argv=None, exit=True):
        code = 0
        try:
            self.create_config()
            self.parse_core(argv)
            self.parse_collection()
            self.parse_tasks()
            self.parse_cleanup()
            self.update_config()
            self.execute()
        except ParseError as exc:
            print(f"sshexec: {exc}\n  → see: sshexec --help, or sshexec --help COMMAND", file=sys.stderr)
            code = 2
        except Exit as exc:
            if exc.message:
                print(exc.message, file=sys.stderr)
            code = exc.code
        except SshexecError as exc:
            ui.error(exc)
            code = exc.exit_code
        except KeyboardInterrupt:
            print("cancelled", file=sys.stderr)
            code = 130
        except Exception as exc:  # noqa: BLE001 - last resort: say what happened, exit 3
            ui.error(exc)
            code = exit_code_for(exc)
        if exit:
            sys.exit(code)
        return code


ns = build_collection()
program = SshexecProgram(name="sshexec", binary="sshexec", binary_names=["sshexec"], version=__version__, namespace=ns)


class _WarningHandler(logging.Handler):
    """Library warnings reach the person as `warning: ...` lines on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            ui.warn(record.getMessage())
        except Exception:  # noqa: BLE001 - never let a log line break a run
            pass


def setup_logging() -> None:
    log = logging.getLogger("sshexec")
    if not log.handlers:
        log.addHandler(_WarningHandler(logging.WARNING))
        log.propagate = False
    # paramiko logs transport errors we already translate into our own messages.
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)


def main() -> None:
    setup_logging()
    program.run()
