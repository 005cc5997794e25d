"""What the person at the terminal sees: tables, progress, errors. Library code never prints."""

from __future__ import annotations

import json
import sys
import threading
from typing import Any, Iterable

from ..errors import SshexecError

_console = None
_err_console = None


_lock = threading.Lock()


# emoji=False: `:name:` in a worker's or a script's text stays as written (safe() escapes
# markup, not emoji codes), and rich never loads its emoji table.
def console():
    global _console
    if _console is None:
        from rich.console import Console

        with _lock:
            if _console is None:
                _console = Console(highlight=False, emoji=False, soft_wrap=False, width=None if sys.stdout.isatty() else 160)
    return _console


def err_console():
    global _err_console
    if _err_console is None:
        from rich.console import Console

        with _lock:
            if _err_console is None:
                _err_console = Console(stderr=True, highlight=False, emoji=False, soft_wrap=True)
    return _err_console


def preload() -> threading.Thread:
    """Import rich (and make the consoles) in a background thread, while a run waits on its workers.

    The summary at the end then finds rich loaded: its ~25 ms of imports overlap the
    step instead of following it. Signals go to the main thread only, so a Ctrl-C can
    never land inside this import and leave rich half made; a warning printed before
    it is done waits for it (the import system's own lock).
    """

    def load() -> None:
        err_console()
        console()
        import rich.table  # noqa: F401 - the summary's

    t = threading.Thread(target=load, name="sshexec-ui-preload", daemon=True)
    t.start()
    return t


def interactive() -> bool:
    """Progress bars and colours only for a person at a terminal."""
    return err_console().is_terminal


def safe(text: Any) -> str:
    """Text from scripts or files, fit for the terminal: no control sequences, no markup, valid UTF-8."""
    from rich.markup import escape

    from ..step.output import neutralise

    return escape(neutralise(str(text).encode("utf-8", "surrogateescape")).decode("utf-8", "replace"))


def print_json(data: Any) -> None:
    # Values that held undecodable bytes carry surrogates: replace them, JSON must be UTF-8.
    text = json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n"
    sys.stdout.buffer.write(text.encode("utf-8", "replace"))
    sys.stdout.buffer.flush()


def error(exc: BaseException) -> None:
    escape = safe

    c = err_console()
    if isinstance(exc, SshexecError):
        c.print(f"[bold red]error:[/] {escape(exc.message)}")
        if exc.hint:
            c.print(f"  [yellow]→[/] {escape(exc.hint)}")
    else:
        c.print(f"[bold red]error:[/] {escape(type(exc).__name__)}: {escape(str(exc))}")


def warn(message: str) -> None:
    err_console().print(f"[yellow]warning:[/] {safe(message)}")


def info(message: str) -> None:
    err_console().print(safe(message))


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


def health_table(results: Iterable) -> None:
    from rich.table import Table

    escape = safe

    table = Table(title="sshexec check", title_justify="left")
    for col in ("worker", "address", "ssh", "host key", "docker", "daemon", "permission", "version", "platform", "free", "slots"):
        table.add_column(col, no_wrap=col in ("worker", "address"), overflow="fold")
    problems: list = []
    notes = []
    for h in results:
        if not h.docker_required:
            docker = ["[dim]n/a[/]", "[dim]–[/]", "[dim]–[/]", "–", "–", "–", "–"]
            notes.append(f"{h.worker}: a jump host (in no pool): SSH and host key checked, Docker not required")
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
                      _slots(h.slots.used, h.slots.max)]
        table.add_row(escape(h.worker), escape(h.address), _mark(h.ssh), _mark(h.host_key), *docker)
        if h.error is not None:
            problems.append(h.error)
        for w in h.warnings:
            problems.append(w)
    c = console()
    c.print(table)
    for p in problems:
        if isinstance(p, str):
            c.print(f"[yellow]![/] {escape(p)}")
        else:
            c.print(f"[red]✗[/] {escape(p.message)}")
            if p.hint:
                c.print(f"    [yellow]→[/] {escape(p.hint)}")
    for note in notes:
        c.print(f"[dim]·[/] {escape(note)}")


def progress_wanted(json: bool = False) -> bool:
    """Live progress only for a person at a terminal: never with --json or when output is redirected."""
    return not json and sys.stdout.isatty() and sys.stderr.isatty()


class TerminalOut:
    """The terminal as a binary file: straight through, or above a live progress display."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout.buffer
        self.console = None  # set while a progress display is live
        self._pending = b""
        self._lock = threading.Lock()

    def write(self, data: bytes) -> int:
        with self._lock:
            if self.console is None:
                self.stream.write(data)
                return len(data)
            data = self._pending + data
            head, sep, self._pending = data.rpartition(b"\n")
            if sep:
                self.console.out(head.decode("utf-8", "replace"), highlight=False)
            return len(data)

    def flush(self) -> None:
        with self._lock:
            self.stream.flush()

    def detach(self) -> None:
        with self._lock:
            self.console = None
            if self._pending:
                self.stream.write(self._pending)
                self._pending = b""
            self.stream.flush()


class LiveProgress:
    """Progress bars keyed by name; the display starts with the first and stops with the last.

    Disabled (every call a no-op) when nobody watches a terminal.
    """

    def __init__(self, enabled: bool, out: TerminalOut | None = None):
        self.enabled = enabled
        self.out = out
        self._progress = None
        self._tasks: dict = {}
        self._lock = threading.Lock()

    def update(self, key, description: str, *, completed: float | None = None, total: float | None = None) -> None:
        if not self.enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        with self._lock:
            if self._progress is None:
                self._progress = Progress(
                    SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err_console(), transient=True,
                )  # fmt: skip
                self._progress.start()
                if self.out is not None:
                    self.out.console = self._progress.console
            if key not in self._tasks:
                self._tasks[key] = self._progress.add_task(description, total=total)
            self._progress.update(self._tasks[key], description=description, completed=completed, total=total)

    def done(self, key) -> None:
        if not self.enabled:
            return
        with self._lock:
            task = self._tasks.pop(key, None)
            if task is not None and self._progress is not None:
                self._progress.remove_task(task)
            if not self._tasks:
                self._stop()

    def close(self) -> None:
        with self._lock:
            self._tasks.clear()
            self._stop()

    def _stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
            if self.out is not None:
                self.out.detach()
