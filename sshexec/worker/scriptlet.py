"""Remote command lines, built from argv and quoted in exactly one place.

Every remote command is a `Scriptlet`: a constant piece of sh that sshexec ships,
whose values reach it as positional parameters ("$1", "$2", ...), never as
shell text. Secrets never travel on a command line at all: they go through stdin.

sshd does not run a command line itself: it hands it to the user's *login
shell* (`$SHELL -c LINE`), which may be fish or tcsh rather than a POSIX sh.
So the line is built to mean the same thing to all of them (`through_sh`):

    sh -c 'eval "$(printf "BODY")"' sshexec-NAME

BODY is the sh program, `set -- ARG...` first, with every byte outside a small
safe set written as a printf octal escape (\\ooo). What is left in the quotes
holds no quote, no backslash pair, no newline, no `!`, `$` or `%`, so sh, bash,
dash, fish and tcsh all pass it to sh untouched, and sh's printf turns it
back into the exact program. tests/unit/test_command_shells.py runs random
argvs through the real shells.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Sequence


def quote(argv: Sequence[str]) -> str:
    """An argv as POSIX sh words (for the sh programs of scriptlets; see `through_sh`)."""
    for word in argv:
        if not isinstance(word, str):
            raise TypeError(f"argv words must be str, got {type(word).__name__}")
        if "\0" in word:
            raise ValueError("a command word cannot contain a NUL byte")
    return " ".join(shlex.quote(word) for word in argv)


@dataclass(frozen=True)
class Scriptlet:
    """A constant sh program; `{docker}` in it stands for the worker's docker argv.

    The text is ours, never the user's. Values are passed as "$1", "$2", ...
    """

    name: str
    text: str

    def script(self, docker: Sequence[str]) -> str:
        """The sh program, the worker's docker command in place of `{docker}`."""
        return self.text.replace("{docker}", quote(docker))

    def argv(self, docker: Sequence[str], *args: str) -> list[str]:
        """What `command()` runs, as a local argv: `sh -c SCRIPT sshexec-NAME ARG...` (tests run it directly)."""
        return ["sh", "-c", self.script(docker), f"sshexec-{self.name}", *args]

    def command(self, docker: Sequence[str], *args: str) -> str:
        """The command line that runs this scriptlet with `args` as "$1", "$2", ... under any login shell."""
        return through_sh(self.script(docker), f"sshexec-{self.name}", args)


# Bytes that stand for themselves inside the line's quotes; any other byte is
# written \ooo. Left out, and why: ' ends the outer quotes; \ escapes \ and '
# inside fish's single quotes; a newline ends a quoted word in tcsh
# ("Unmatched '"); ! is tcsh history expansion even inside single quotes;
# " $ ` are special inside sh's double quotes; % starts a printf directive;
# control bytes and non-ASCII depend on each shell's locale handling.
_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 #&()*+,-./:;<=>?@[]^_{|}~")
_ENCODE = tuple(chr(b) if b in _SAFE else f"\\{b:03o}" for b in range(256))
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def through_sh(script: str, name: str, args: Sequence[str] = ()) -> str:
    """`sh -c SCRIPT NAME ARGS...` as one line that every login shell hands to sh unchanged.

    `name` (sh's $0) must be made of safe characters: it stays a word of its own
    so that `ps` on the worker shows which scriptlet runs.
    """
    if not _NAME.fullmatch(name):
        raise ValueError(f"a scriptlet name must be a plain word, not {name!r}")
    body = f"set -- {quote(args)}\n{script}"
    if "\0" in body:
        raise ValueError("a command cannot contain a NUL byte")
    # surrogateescape: a str that came from undecodable bytes goes back as those bytes.
    encoded = "".join(_ENCODE[b] for b in body.encode("utf-8", "surrogateescape"))
    return f"sh -c 'eval \"$(printf \"{encoded}\")\"' {name}"


_LINE = re.compile(r"""sh -c 'eval "\$\(printf "([^'"]*)"\)"' ([A-Za-z0-9_.-]+)""")
_WORD = r"""(?:'[^']*'|"'"|[^\s'"]+)+"""  # one word as shlex.quote writes it
_SET = re.compile(rf"set -- ((?:{_WORD}(?: {_WORD})*)?)\n")


def unwrap(line: str) -> list[str]:
    """What a `through_sh` line runs, as the argv `sh -c SCRIPT NAME ARG...` (for tests and debugging)."""
    m = _LINE.fullmatch(line)
    if m is None:
        raise ValueError("not a command line made by through_sh")
    body = re.sub(rb"\\([0-7]{3})", lambda o: bytes([int(o[1], 8)]), m[1].encode()).decode("utf-8", "surrogateescape")
    words = _SET.match(body)
    if words is None:
        raise ValueError("not a command line made by through_sh")
    return ["sh", "-c", body[words.end() :], m[2], *shlex.split(words[1])]
