"""`sshexec --help [COMMAND]`: at most 80 columns wide, with the names a person expects.

invoke's own help shows a positional argument as an option (`-r STRING,
--runbook=STRING`), a value by its Python type (`--lock-wait=STRING`) and a
list option with no value at all (`-v, --var`), and it is as wide as the
terminal. Here operands are listed as operands, each option's value has a name
(`--lock-wait SECONDS`, `-v, --var NAME=VALUE`, `--retry-failed RUN_ID`), and
every line is broken between words to fit 80 columns (fewer if the terminal
is narrower).
"""

from __future__ import annotations

import inspect
import re
import shutil
import textwrap

WIDTH = 80
INDENT = "  "

# The value an option takes, by its name (a task may add its own: common.metavars).
METAVARS = {
    "inventory": "PATH",
    "pool": "POOL",
    "worker": "WORKER",
    "parallel": "N",
    "db": "URL",
    "db-password-file": "FILE",
    "feed": "FEED",
    "limit": "N",
    "status": "STATUS",
    "runbook": "NAME",
    "older-than": "DAYS",
    "keep": "N",
    "keep-free": "SIZE",
    "artifact-max": "SIZE",
    "lock-wait": "SECONDS",
    "var": "NAME=VALUE",
    "retry-failed": "RUN_ID",
    "output": "FILE",
    "bind": "HOST:PORT",
    "runbooks": "DIR",
    "tls-cert": "FILE",
    "tls-key": "FILE",
    "max-body": "SIZE",
    "forwarded-allow-ips": "ADDRESSES",
    "stream-recheck": "SECONDS",
    "role": "ROLE",
    "workers": "N",
}


def width() -> int:
    """80 columns, or the terminal's (or $COLUMNS) if narrower; never under 40."""
    return max(40, min(WIDTH, shutil.get_terminal_size((WIDTH, 24)).columns))


def wrap(text: str, indent: str = "", hang: str | None = None, at: int | None = None) -> list[str]:
    """One line of text broken between words to fit, continuation lines indented by `hang`."""
    at = at or width()
    hang = indent if hang is None else hang
    if len(indent) + len(text) <= at:
        return [indent + text]
    return textwrap.wrap(text, at, initial_indent=indent, subsequent_indent=hang, break_long_words=False, break_on_hyphens=False) or [indent]


def prose(doc: str, at: int | None = None) -> list[str]:
    """A docstring, indented, each of its lines fitted; a line like `up      start ...` hangs under its text."""
    out = []
    for line in doc.splitlines():
        if not line.strip():
            out.append("")
            continue
        m = re.match(r"(\s*(?:\S+\s{2,})?)", line)
        hang = INDENT + " " * len(m.group(1)) if m else INDENT
        out += wrap(line, INDENT, hang, at)
    return out


def columns(pairs: list[tuple[str, str]], at: int | None = None, most: int = 26) -> list[str]:
    """Two columns, `left  text`: the text wrapped under itself; a left side too long for its column
    gets the text on the lines below it."""
    at = at or width()
    left = min(max((len(a) for a, _ in pairs), default=0), most)
    hang = INDENT + " " * (left + 2)
    out = []
    for a, text in pairs:
        if len(a) <= left:
            out += wrap(text, INDENT + a.ljust(left + 2), hang, at)
        else:
            out.append(INDENT + a)
            out += wrap(text, hang, hang, at)
    return out


def metavar(task, arg) -> str:
    """The name of the value `arg` takes ("" for a flag)."""
    if arg.kind is bool:
        return ""
    name = arg.names[0]
    return getattr(task, "metavars", {}).get(name) or METAVARS.get(name) or name.upper().replace("-", "_")


def option_rows(task, ctx) -> list[tuple[str, str]]:
    """`-i, --inventory PATH` and its help, for each option of a command (not its operands)."""
    rows = []
    for arg in sorted((a for a in ctx.args.values() if not a.positional), key=lambda a: a.names[0]):
        long_, short = arg.names[0], [n for n in arg.names[1:] if len(n) == 1]
        shown = (f"-{short[0]}, " if short else "    ") + f"--{long_}"
        value = metavar(task, arg)
        rows.append((shown + (f" {value}" if value else ""), arg.help or ""))
    return rows


def operand_name(arg) -> str:
    return arg.name.upper().replace("-", "_")


def task_help(binary: str, name: str, task, ctx, optional: tuple[str, ...]) -> str:
    """`sshexec --help COMMAND`."""
    operands = "".join(f" [{operand_name(a)}]" if a.name in optional else f" {operand_name(a)}" for a in ctx.positional_args)
    lines = [f"Usage: {binary} {name} [OPTIONS]{operands}"]
    lines += [f"       {binary} {usage}" for usage in getattr(task, "more_usage", ())]
    lines.append("")
    lines += prose(inspect.getdoc(task) or "")
    if ctx.positional_args:
        lines += ["", "Arguments:", ""]
        lines += columns([(operand_name(a), a.help or "") for a in ctx.positional_args])
    lines += ["", "Options:", ""]
    lines += columns(option_rows(task, ctx))
    return "\n".join(lines) + "\n"
