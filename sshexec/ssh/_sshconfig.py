"""The operator's OpenSSH client config, with `Include`, read into one paramiko SSHConfig.

paramiko's SSHConfig has no `Include`, and most real configs use it (`Include
config.d/*`, the snippets colima or OrbStack add). We add it on top of paramiko,
as pyinfra does, rather than asking OpenSSH (`ssh -G HOST`): one code path on
every machine (the client need not be installed), no process per host, and no
guessing which of the values `ssh -G` prints were written and which are its
defaults (sshexec's own defaults and the inventory come first). The files are
read as OpenSSH reads them:

- a path without `/` at its start is relative to ~/.ssh (to /etc/ssh in the
  system config); `~` is the home directory; globs are expanded, sorted, and a
  pattern that matches nothing is no error; several paths may follow one Include;
- an Include inside a `Host`/`Match` block applies only when that block does:
  the included lines keep its condition, and a `Host` in the included file
  becomes a `Match` that adds the outer condition to its own;
- after the included file, the lines that follow are in the outer block again;
- at most 16 levels deep (OpenSSH's limit), so a loop is an error, not a hang.
"""

from __future__ import annotations

import glob
import io
import os
import re
from pathlib import Path

import paramiko

from ..errors import InputError

MAX_DEPTH = 16
_KEYWORD = re.compile(r"^\s*(\w+)(?:\s*=\s*|\s+)(.*?)\s*$")


def load(user: Path | None, system: Path | None) -> paramiko.SSHConfig:
    """user's config, then system's (the first value found wins, as in OpenSSH), Includes resolved."""
    lines: list[str] = []
    for path, base in ((user, Path.home() / ".ssh"), (system, Path("/etc/ssh"))):
        if path is not None and path.is_file():
            lines.append("Host *")
            _flatten(path, base, None, lines, 0)
    return paramiko.SSHConfig.from_file(io.StringIO("\n".join(lines) + "\n"))


def _flatten(path: Path, base: Path, outer: str | None, out: list[str], depth: int) -> None:
    """Append path's lines to out, each Include replaced by what it includes.

    outer: the Match criteria every block of this file must also meet (the block
    the Include stood in), or None at the top level.
    """
    if depth > MAX_DEPTH:
        raise InputError(f"ssh config {path}: Include nested more than {MAX_DEPTH} deep", hint="an Include probably includes itself")
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise InputError(f"cannot read the ssh config {path}: {exc.strerror}") from None
    # The block we are in: its header as written out, and its condition for what it includes.
    header, condition = ("Match " + outer, outer) if outer else ("Host *", None)
    for raw in text.splitlines():
        m = _KEYWORD.match(raw)
        if not m or raw.lstrip().startswith("#"):
            out.append(raw)
            continue
        key, value = m[1].lower(), m[2]
        if key == "host":
            own = "originalhost " + ",".join(value.split())
            if outer is None:
                header, condition = raw, (None if value.split() == ["*"] else own)
            else:
                condition = f"{outer} {own}"
                header = "Match " + condition
            out.append(header)
        elif key == "match":
            condition = f"{outer} {value}" if outer else value
            header = "Match " + condition
            out.append(header)
        elif key == "include":
            for included in _paths(value, base):
                _flatten(included, base, condition, out, depth + 1)
                out.append(header)
        else:
            out.append(raw)


def _paths(value: str, base: Path) -> list[Path]:
    """The files one Include names, in OpenSSH's order (each pattern's matches sorted)."""
    found: list[Path] = []
    for word in _words(value):
        word = os.path.expanduser(word)
        pattern = word if os.path.isabs(word) else str(base / word)
        found += [Path(p) for p in sorted(glob.glob(pattern)) if os.path.isfile(p)]
    return found


def _words(value: str) -> list[str]:
    """Include's arguments: separated by spaces, a "quoted path" kept whole."""
    return [a or b for a, b in re.findall(r'"([^"]*)"|(\S+)', value)]
