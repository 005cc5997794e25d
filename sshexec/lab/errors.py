"""The lab's errors: one tree, grafted onto sshexec's (sshexec/errors.py).

    SshexecError                      (sshexec.errors; exit 3 unless a subclass says otherwise)
    └── LabError                      3   the lab could not be brought up or down; the message says what to do
        └── ImageBuildError               building a lab image failed: the image, the command, its output tail

The program shows them like any SshexecError: the message, the hint, exit 3.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable

from ..errors import SshexecError

TAIL_LINES = 20


class LabError(SshexecError):
    """The lab could not be brought up or down; the message says what to do."""


class ImageBuildError(LabError):
    """Building a lab image failed; carries the image, the command and its output tail."""

    def __init__(
        self,
        image: str | None,
        message: str,
        *,
        argv: Iterable[str] = (),
        returncode: int | None = None,
        output: str = "",
        hint: str | None = None,
    ):
        self.image = image
        self.argv = tuple(argv)
        self.returncode = returncode
        self.tail = "\n".join(output.rstrip().splitlines()[-TAIL_LINES:])
        text = f"lab image {image}: {message}" if image else f"lab images: {message}"
        if self.tail:
            text += "\n" + "\n".join("    " + line for line in self.tail.splitlines())
        super().__init__(text, hint=hint)

    @classmethod
    def command_failed(cls, image: str | None, argv: list[str], returncode: int, output: str):
        return cls(
            image,
            f"`{shlex.join(argv)}` exited {returncode}; last lines of its output:",
            argv=argv,
            returncode=returncode,
            output=output,
        )
