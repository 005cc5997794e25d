"""What the person at the terminal sees: tables, progress, errors. Library code never prints."""

from __future__ import annotations

import json
import sys
from typing import Any, Iterable

from .errors import SshexecError

_console = None
_err_console = None


def console():
    global _console
    if _console is None:
        from rich.console import Console

        _console = Console(highlight=False, soft_wrap=False, width=None if sys.stdout.isatty() else 160)
    return _console


def err_console():
    global _err_console
    if _err_console is None:
        from rich.console import Console

        _err_console = Console(stderr=True, highlight=False, soft_wrap=True)
    return _err_console


def interactive() -> bool:
    """Progress bars and colours only for a person at a terminal."""
    return err_console().is_terminal


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def error(exc: BaseException) -> None:
    from rich.markup import escape

    c = err_console()
    if isinstance(exc, SshexecError):
        c.print(f"[bold red]error:[/] {escape(exc.message)}")
        if exc.hint:
            c.print(f"  [yellow]→[/] {escape(exc.hint)}")
    else:
        c.print(f"[bold red]error:[/] {escape(type(exc).__name__)}: {escape(str(exc))}")


def warn(message: str) -> None:
    from rich.markup import escape

    err_console().print(f"[yellow]warning:[/] {escape(message)}")


def info(message: str) -> None:
    from rich.markup import escape

    err_console().print(escape(message))


def _mark(value: bool | None) -> str:
    return {True: "[green]✓[/]", False: "[red]✗[/]", None: "[dim]–[/]"}[value]


def _size(n: int | None) -> str:
    if n is None:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def health_table(results: Iterable) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="sshexec check", title_justify="left")
    for col in ("worker", "address", "ssh", "host key", "docker", "daemon", "permission", "version", "platform", "free"):
        table.add_column(col, no_wrap=col in ("worker", "address"))
    problems = []
    for h in results:
        table.add_row(
            escape(h.worker),
            escape(h.address),
            _mark(h.ssh),
            _mark(h.host_key),
            _mark(h.docker_cli),
            _mark(h.daemon),
            _mark(h.permission),
            escape(h.version or "–"),
            escape(h.platform or "–"),
            _size(h.free_bytes),
        )
        if h.error is not None:
            problems.append(h.error)
        for w in h.warnings:
            problems.append(w)
    c = console()
    c.print(table)
    for p in problems:
        if isinstance(p, SshexecError):
            c.print(f"[red]✗[/] {escape(p.message)}")
            if p.hint:
                c.print(f"    [yellow]→[/] {escape(p.hint)}")
        else:
            c.print(f"[yellow]![/] {escape(str(p))}")
