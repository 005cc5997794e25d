"""What a runbook names outside itself: its steps' script files and files: directories
(relative to the runbook), and the pools and feeds of the inventory it runs on.

Checked from the data as written, so that load_runbook reports them in the same pass
as the structure's problems (a typo elsewhere in the file does not hide them).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import Problem
from ._yaml import field_name, line_of

if TYPE_CHECKING:
    from .inventory import Inventory

MAX_SCRIPT_BYTES = 1 << 20


def references(data: Any, base: Path, file: Path, inventory: Inventory | None) -> list[Problem]:
    """What each step names outside the runbook, as written: its script file and files: directory
    (relative to the runbook), and with `inventory`, its pool and feed."""
    problems = []
    steps = data.get("steps") if isinstance(data, dict) else None
    for i, step in enumerate(steps if isinstance(steps, list) else ()):
        if not isinstance(step, dict):
            continue
        where = ("steps", i)
        script = step.get("script")
        if isinstance(script, dict) and isinstance(script.get("file"), str):
            loc = where + ("script", "file")
            problems.append(script_of(None, script["file"], base, file, line_of(data, loc), field_name(data, loc))[1])
        if isinstance(step.get("files"), str):
            loc = where + ("files",)
            problems.append(files_of(step["files"], base, file, line_of(data, loc), field_name(data, loc))[1])
    if inventory is not None:
        problems += inventory_problems(data, file, inventory)
    return [p for p in problems if p is not None]


def script_of(inline: str | None, name: str | None, base: Path, file: Path, line: int | None, field: str) -> tuple[bytes, Problem | None]:
    """The step's script: inline, or read from script.file (relative to the runbook); else a problem."""
    if name is None:
        return (inline or "").encode(), None
    script_path = base / os.path.expanduser(name)
    try:
        if not script_path.is_file():
            raise FileNotFoundError
        if script_path.stat().st_size > MAX_SCRIPT_BYTES:
            return b"", Problem("the script file is larger than 1 MiB", file, line, field)
        return script_path.read_bytes(), None
    except (FileNotFoundError, NotADirectoryError):
        return b"", Problem(f"script file {script_path} not found", file, line, field, hint="script.file is relative to the runbook file")
    except (OSError, ValueError) as exc:
        return b"", Problem(f"cannot read script file {script_path}: {getattr(exc, 'strerror', None) or exc}", file, line, field)


def files_of(name: str | None, base: Path, file: Path, line: int | None, field: str) -> tuple[Path | None, Problem | None]:
    """The step's files: directory, resolved (relative to the runbook); else a problem."""
    if name is None:
        return None, None
    try:
        files = (base / os.path.expanduser(name)).resolve()
        is_dir = files.is_dir()
    except (OSError, ValueError) as exc:
        return None, Problem(f"bad files directory: {exc}", file, line, field)
    if not is_dir:
        return None, Problem(f"files directory {files} not found", file, line, field, hint="files: is a directory relative to the runbook file")
    return files, None


def inventory_problems(data: Any, file: Path, inventory: Inventory) -> list[Problem]:
    """A problem for each pool and feed a step names (as written) that the inventory lacks."""
    feeds = [f.name for f in inventory.feeds]
    problems = []
    steps = data.get("steps") if isinstance(data, dict) else None
    for i, step in enumerate(steps if isinstance(steps, list) else ()):
        if not isinstance(step, dict):
            continue
        pool, container = step.get("pool"), step.get("container")
        feed = container.get("feed") if isinstance(container, dict) else None
        if isinstance(pool, str) and pool not in inventory.pools:
            loc = ("steps", i, "pool")
            problems.append(Problem(
                f"unknown pool {pool!r}" + (_guess(pool, sorted(inventory.pools)) or f": no worker of {inventory.path} is in it"),
                file=file, line=line_of(data, loc), field=field_name(data, loc),
                hint=f"pools in the inventory: {', '.join(sorted(inventory.pools)) or 'none'}",
            ))  # fmt: skip
        if isinstance(feed, str) and feed not in feeds:
            loc = ("steps", i, "container", "feed")
            problems.append(Problem(
                f"unknown feed {feed!r}" + _guess(feed, feeds),
                file=file, line=line_of(data, loc), field=field_name(data, loc),
                hint=f"feeds in the inventory: {', '.join(feeds) or 'none'}",
            ))  # fmt: skip
    return problems


def _guess(value: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(value, valid, n=1)
    return f": did you mean {close[0]!r}?" if close else ""
