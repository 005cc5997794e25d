"""What the person at the terminal sees: tables, progress, errors. Library code never prints."""

from __future__ import annotations

import json
import re
import sys
import threading
from typing import Any

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
                # Its width is the terminal's, else $COLUMNS, else 80: tables fit it, wherever the output goes.
                _console = Console(highlight=False, emoji=False, soft_wrap=not _wraps(sys.stdout))
    return _console


def err_console():
    global _err_console
    if _err_console is None:
        from rich.console import Console

        with _lock:
            if _err_console is None:
                _err_console = Console(stderr=True, highlight=False, emoji=False, soft_wrap=not _wraps(sys.stderr))
    return _err_console


def forget_consoles() -> None:
    """The next command's output goes elsewhere (a process that runs one command after another: the agent's children)."""
    global _console, _err_console
    with _lock:
        _console = _err_console = None


def _wraps(stream) -> bool:
    """Lines of text are broken between words to the width at a terminal; elsewhere (a file, a pipe)
    each stays whole on one line, as a program reading it expects. (Not $COLUMNS: test runners and
    some shells export it to every child.) Tables fit the width everywhere."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def err_wraps() -> bool:
    """Whether stderr's lines are broken to a width (a terminal), without making its console."""
    return not _err_console.soft_wrap if _err_console is not None else _wraps(sys.stderr)


def line(text: str, *, hang: int | None = None, err: bool = False, con=None) -> None:
    """Print `text` (markup), broken only between words, its continuation lines indented by `hang`.

    `hang` defaults to the line's own indent plus two. A word longer than a line (a path, say)
    is never cut: it stands whole on a line of its own. Without a width to fit (a file, a pipe),
    the line is printed whole.
    """
    from rich.text import Text

    c = con or (err_console() if err else console())
    if c.soft_wrap:
        c.print(text, soft_wrap=True)
        return
    width = max(c.width, 20)
    # A message of several lines (every problem of a runbook, say): each line keeps its own
    # indent, and goes on under its own text.
    for i, row in enumerate(Text.from_markup(text).split("\n", allow_blank=True)):
        plain = row.plain
        lead = len(plain) - len(plain.lstrip(" "))
        indent = hang if i == 0 and hang is not None else lead + 2
        for part in _hanging(row, width, min(indent, width // 2)):
            c.print(part, soft_wrap=True)


def _hanging(t, width: int, hang: int) -> list:
    """`t` cut between words into lines of `width`, the later ones indented by `hang` spaces."""
    from rich.text import Text

    plain = t.plain
    lines, start, end, room = [], 0, 0, width
    for word_start, word_end in _words(plain, width - hang):
        if end > start and word_end - start > room:
            lines.append(t[start:end])
            start, room = word_start, width - hang
        end = word_end
    lines.append(t[start:])
    # A word too long for a line under the indent, but not for the whole line, starts at the margin.
    return [line if i == 0 else Text(" " * hang) + line if hang + line.cell_len <= width else line for i, line in enumerate(lines)]


def copyable(lead: str, command: str, c=None) -> None:
    """`lead command` (markup) on one line if it fits; else the command alone on the next line,
    indented: never broken, so that it can be copied whole (longer than the terminal, the
    terminal wraps it)."""
    from rich.text import Text

    c = c or console()
    if c.soft_wrap or Text.from_markup(f"{lead} {command}").cell_len <= c.width:
        c.print(f"{lead} {command}", soft_wrap=True)
    else:
        line(lead.removesuffix(" ·"), con=c)
        c.print(f"    {command}", soft_wrap=True)


def _words(plain: str, most: int) -> list[tuple[int, int]]:
    """Where each word of `plain` starts and ends; a command quoted in the text (`sshexec trust
    --worker w1 --inventory inv.yaml`) counts as one word when it fits a line, so that it is
    never broken in the middle and can be copied whole."""
    spans = []
    for m in re.finditer(r"sshexec(?: [^\s;,()]+)+|\S+", plain):
        if m.group().startswith("sshexec ") and len(m.group()) > most:
            spans += [(w.start(), w.end()) for w in re.finditer(r"\S+", plain[: m.end()]) if w.start() >= m.start()]
        else:
            spans.append(m.span())
    return spans


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

    if isinstance(exc, SshexecError):
        line(f"[bold red]error:[/] {escape(exc.message)}", hang=7, err=True)
        if exc.hint:
            line(f"  [yellow]→[/] {escape(exc.hint)}", hang=4, err=True)
    else:
        line(f"[bold red]error:[/] {escape(type(exc).__name__)}: {escape(str(exc))}", hang=7, err=True)


def warn(message: str) -> None:
    line(f"[yellow]warning:[/] {safe(message)}", hang=9, err=True)


def info(message: str) -> None:
    line(safe(message), err=True)


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
