"""Remote command lines, built from argv and quoted in exactly one place.

A remote command is either a plain argv (`quote(["docker", "pull", ref])`) or a
`Scriptlet`: a constant piece of sh that sshexec ships, run as
`sh -c SCRIPT sshexec ARG...` so that every value reaches it as a positional
parameter, never as shell text. Secrets never travel on a command line at all:
they go through stdin.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Sequence


def quote(argv: Sequence[str]) -> str:
    """The one place where an argv becomes a shell command line."""
    for word in argv:
        if not isinstance(word, str):
            raise TypeError(f"argv words must be str, got {type(word).__name__}")
        if "\0" in word:
            raise ValueError("a command word cannot contain a NUL byte")
    return " ".join(shlex.quote(word) for word in argv)


class Secret:
    """A string that never shows its value in str(), repr() or f-strings."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return "********"

    def __eq__(self, other) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self):
        raise TypeError("a Secret cannot be pickled")


@dataclass(frozen=True)
class Scriptlet:
    """A constant sh program; `{docker}` in it stands for the worker's docker argv.

    The text is ours, never the user's. Values are passed as "$1", "$2", ...
    """

    name: str
    text: str

    def argv(self, docker: Sequence[str], *args: str) -> list[str]:
        body = self.text.replace("{docker}", quote(docker))
        return ["sh", "-c", body, f"sshexec-{self.name}", *args]

    def command(self, docker: Sequence[str], *args: str) -> str:
        return quote(self.argv(docker, *args))
