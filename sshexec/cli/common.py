"""What several commands share: argument checks, help strings, the inventory, the health table.

Nothing here imports a command module, and the library is imported only when
a command runs, so `sshexec --help` stays fast.
"""

from __future__ import annotations

from invoke import Exit

from .. import ui
from ..errors import InputError

HELP_INVENTORY = "inventory file (default: $SSHEXEC_INVENTORY or inventory/workers.yaml)"
HELP_JSON = "print machine-readable JSON instead of tables"
HELP_POOL = "only workers of this pool"
HELP_WORKER = "only this worker"
HELP_PARALLEL = "how many workers at once (default 16)"


def positional(value: str | None, what: str, usage: str) -> str:
    """A required positional argument; a flag in its place is a typo, not a file name."""
    if not value:
        raise InputError(f"{what} is missing: {usage}")
    if value.startswith("-"):
        raise InputError(f"unknown option {value}", hint=f"usage: {usage}; see sshexec --help")
    return value


def load_inventory(path: str | None):
    """The inventory at `path` (or the default one); InputError with file:line:field if bad."""
    from ..inventory import load_inventory as load

    return load(path)


def check_workers(workers, *, parallel: int) -> list:
    """The health of each worker (sshexec.health), `parallel` at a time, in the workers' order."""
    from ..fleet import fan_out
    from ..health import check_worker

    results = fan_out(workers, check_worker, parallel=parallel)
    healths = list(results.values())
    for h in healths:
        if isinstance(h, BaseException):
            raise h  # check_worker reports worker problems in its result: this is a bug or Ctrl-C
    return healths


def show_health(healths: list, *, json: bool) -> None:
    """The health table (or JSON); Exit 3 unless every worker is healthy."""
    healthy = all(h.healthy for h in healths)
    if json:
        ui.print_json({"healthy": healthy, "workers": [h.to_dict() for h in healths]})
    else:
        ui.health_table(healths)
    if not healthy:
        raise Exit(code=3)
