"""What `sshexec check` shows: a compact table that fits 80 columns, or every detail (--wide).

Compact: worker, address, status, docker, free, problem; the problem in a word
or two, and below the table each problem in full with what to do, on lines that
are broken only between words. --wide adds the SSH and host key checks, the
daemon that answered (its endpoint, name and ID), permission, platform, the
daemon's own disk and the slots; --json has everything.
"""

from __future__ import annotations

from typing import Iterable

from . import ui
from .tables import Col, show

# The address cut only when it must, and then before its port (up to 15 columns, as 127.0.0.1:32774, it goes
# whole before free and docker are kept); the problem in a word (said in full below the table).
COMPACT = (Col("worker"), Col("address", flex=3, keep_tail=":", prefer=15), Col("status"), Col("docker", drop=2), Col("free", justify="right", drop=1), Col("problem"))

# A problem in a word or two, by the error's class (errors.py); the line below the table says it in full.
PROBLEMS = {
    "UnreachableError": "unreachable",
    "AuthError": "login refused",
    "UnknownHostKey": "unknown host key",
    "ChangedHostKey": "host key changed",
    "RevokedHostKey": "host key revoked",
    "HostCertificateError": "host certificate",
    "HostKeyError": "host key",
    "ConnectionLost": "connection lost",
    "RemoteTimeout": "timed out",
    "DockerMissing": "no docker CLI",
    "DaemonDown": "daemon down",
    "DockerPermission": "no permission",
    "DiskFull": "disk full",
}


def _mark(value: bool | None) -> str:
    return {True: "[green]✓[/]", False: "[red]✗[/]", None: "[dim]–[/]"}[value]


def _size(n: int | None) -> str:
    from ..core.units import human_size

    return "–" if n is None else human_size(n)


def _slots(used: int | None, most: int | None) -> str:
    """Step containers running / max_steps ("–" unlimited)."""
    if used is None:
        return "–"
    return f"{used}/{most}" if most else f"{used}/–"


def problem(h) -> str:
    """The worker's problem in a word or two ("" if none)."""
    if h.error is not None:
        return PROBLEMS.get(h.error.error, h.error.error)
    return "warning" if h.warnings else ""


def _status(h) -> str:
    if h.error is not None:
        return "[red]✗ failed[/]"
    if not h.docker_required:
        return "[green]✓ jump[/]"
    return "[yellow]! ok[/]" if h.warnings else "[green]✓ ok[/]"


def _docker(h) -> str:
    """The daemon's version (without the distribution's suffix), or why there is none."""
    if not h.docker_required:
        return "[dim]n/a[/]"
    if h.version:
        return ui.safe(h.version.split("+")[0])
    return _mark(False) if h.docker_cli is False or h.daemon is False or h.permission is False else "[dim]–[/]"


def compact(results: Iterable) -> None:
    """The default: one line per worker, at most 80 columns wide."""
    results = list(results)
    rows = [[ui.safe(h.worker), ui.safe(h.address), _status(h), _docker(h), _size(h.free_bytes) if h.docker_required else "[dim]–[/]", ui.safe(problem(h))]
            for h in results]  # fmt: skip
    show("sshexec check", COMPACT, rows)
    _below(results)


def wide(results: Iterable) -> None:
    """--wide: every check, and which daemon answered."""
    from rich.table import Table

    escape = ui.safe
    results = list(results)
    table = Table(title="sshexec check", title_justify="left")
    for col in ("worker", "address", "ssh", "host key", "docker", "daemon", "permission", "version", "platform", "free", "slots"):
        table.add_column(col, no_wrap=col in ("worker", "address"), overflow="fold")
    for h in results:
        if not h.docker_required:
            docker = ["[dim]n/a[/]", "[dim]–[/]", "[dim]–[/]", "–", "–", "–", "–"]
        else:
            # Which daemon answered: the endpoint, then its name and ID (shortened) from `docker info`.
            daemon = _mark(h.daemon)
            if h.endpoint:
                daemon += "\n" + escape(h.endpoint)
            if h.daemon_name or h.daemon_id:
                daemon += "\n" + escape(" ".join(x for x in (h.daemon_name, (h.daemon_id or "")[:14]) if x))
            free = f"work_root {_size(h.free_bytes)}"
            if h.docker_root is not None:
                free += f"\ndocker {_size(h.docker_free_bytes)}"
            docker = [_mark(h.docker_cli), daemon, _mark(h.permission), escape(h.version or "–"), escape(h.platform or "–"), free,
                      _slots(h.slots.used, h.slots.max)]  # fmt: skip
        table.add_row(escape(h.worker), escape(h.address), _mark(h.ssh), _mark(h.host_key), *docker)
    c = ui.console()
    if _natural(table) > c.width:
        if c.is_terminal:  # too narrow for the table: a few lines per worker, every detail in words
            _blocks(results)
            _below(results)
            return
        from rich.console import Console

        # Asked for, off a terminal (a file, a pipe): the whole table, as wide as it is.
        c = Console(file=c.file, width=_natural(table), highlight=False, emoji=False, soft_wrap=c.soft_wrap)
    c.print(table)
    _below(results)


def _blocks(results: list) -> None:
    """--wide at a terminal too narrow for its table: each worker's details as lines of words."""
    escape = ui.safe
    ui.line("sshexec check")
    for h in results:
        ui.line(f"[bold]{escape(h.worker)}[/]  {escape(h.address)}  {_status(h)}", hang=4)
        checks = [("ssh", h.ssh), ("host key", h.host_key)]
        if h.docker_required:
            checks += [("docker", h.docker_cli), ("daemon", h.daemon), ("permission", h.permission)]
        ui.line("  " + " · ".join(f"{name} {_mark(v)}" for name, v in checks), hang=4)
        if not h.docker_required:
            ui.line("  a jump host: Docker not required", hang=4)
            continue
        which = " · ".join(x for x in (h.endpoint, " ".join(y for y in (h.daemon_name, (h.daemon_id or "")[:14]) if y)) if x)
        if which:
            ui.line(f"  daemon: {escape(which)}", hang=4)
        ui.line(f"  version {escape(h.version or '–')} · {escape(h.platform or '–')} · slots {_slots(h.slots.used, h.slots.max)}", hang=4)
        free = f"  free: work_root {_size(h.free_bytes)}" + (f" · docker {_size(h.docker_free_bytes)}" if h.docker_root is not None else "")
        ui.line(free, hang=4)


def _natural(table) -> int:
    """How wide `table` is when nothing limits it."""
    import io

    from rich.console import Console

    return Console(width=1000, file=io.StringIO()).measure(table).maximum


def _below(results: list) -> None:
    """Each problem and warning in full, with what to do; then the notes on jump hosts."""
    escape = ui.safe
    for h in results:
        if h.error is not None:
            ui.line(f"[red]✗[/] {escape(h.error.message)}", hang=2)
            if h.error.hint:
                ui.line(f"    [yellow]→[/] {escape(h.error.hint)}", hang=6)
        for w in h.warnings:
            ui.line(f"[yellow]![/] {escape(w)}", hang=2)
    for h in results:
        if not h.docker_required:
            ui.line(f"[dim]·[/] {escape(h.worker)}: a jump host (in no pool): SSH and host key checked, Docker not required", hang=2)
