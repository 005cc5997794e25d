"""Secrets: values that never show in str() or repr(), and the masker that replaces them with ******** in output.

`Masker` replaces every secret wherever it appears (inside a longer word too),
holding back only a tail that could be the start of a secret, so a secret split
across reads is still caught (`safe_cut`). MIN_SECRET says what happens to
secrets too short to mask without mangling the output. `masked_logs` puts the
masker in front of every record of the "sshexec" logger.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from typing import Iterable, Iterator


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



# Names of the environment variables this process read a secret from (never their values): a process
# that runs one command after another (the agent's reusable children) wipes those values from its
# memory after each command (agent/scrub.py).
_secret_names: set[str] = set()


def secret_from_env(name: str, environ=None) -> str | None:
    """The value of environment variable `name`, noted as a secret's source."""
    import os

    _secret_names.add(name)
    return (os.environ if environ is None else environ).get(name)


def secret_env_names(*, forget: bool = False) -> set[str]:
    names = set(_secret_names)
    if forget:
        _secret_names.clear()
    return names


MASK = b"********"

# The shortest secret sshexec accepts. The masker replaces every occurrence of a
# secret, inside words too (a secret glued to other text must not get through),
# so a short one mangles the output: with a sensitive value "x", an image name
# prints as "none********istent". Sensitive variables and feed passwords shorter
# than this are refused before anything is contacted (GitLab refuses to mask a
# variable shorter than 8 characters, for the same reason); a sensitive output a
# script sets is masked all the same, with a warning, since the script already ran.
MIN_SECRET = 8
SHORT_SECRET_HINT = (
    f"a sensitive value needs at least {MIN_SECRET} characters: masking a shorter one would hide "
    "those characters wherever they appear in the output. Use a longer value (or a plain variable, if it is no secret)"
)


def short_secret(value: str) -> str:
    """What is wrong with a secret shorter than MIN_SECRET, without saying what it is."""
    return "is empty" if not value else f"is shorter than {MIN_SECRET} characters"


class Masker:
    """Replaces secret values with ******** in bytes and text. Thread-safe; secrets can be added."""

    def __init__(self, secrets: Iterable[str] = ()):
        self._lock = threading.Lock()
        self._secrets: tuple[bytes, ...] = ()
        for s in secrets:
            self.add(s)

    def add(self, secret: str) -> None:
        data = secret.encode("utf-8", "surrogateescape")
        if not data:
            return
        with self._lock:
            if data not in self._secrets:
                # Longest first, so that a secret containing another is masked whole.
                self._secrets = tuple(sorted(self._secrets + (data,), key=len, reverse=True))

    @property
    def secrets(self) -> tuple[bytes, ...]:
        return self._secrets

    def __bool__(self) -> bool:
        return bool(self._secrets)

    def mask(self, data: bytes) -> bytes:
        for s in self._secrets:
            if s in data:
                data = data.replace(s, MASK)
        return data

    def mask_text(self, text: str) -> str:
        if not self._secrets:
            return text
        return self.mask(text.encode("utf-8", "surrogateescape")).decode("utf-8", "surrogateescape")

    def safe_cut(self, data: bytes) -> int:
        """How much of `data` can be masked and released now.

        Everything before the cut can be masked on its own: no secret starts
        before it and ends after it, and no secret may start in the held tail
        and continue in bytes not yet read.
        """
        secrets = self._secrets
        if not secrets:
            return len(data)
        cut = len(data)
        # A tail that is a proper prefix of some secret may continue in the next read.
        for s in secrets:
            for k in range(min(len(s) - 1, len(data)), 0, -1):
                if data.endswith(s[:k]):
                    cut = min(cut, len(data) - k)
                    break
        # Never cut through a secret that is already whole in the buffer.
        moved = True
        while moved:
            moved = False
            for s in secrets:
                start = data.rfind(s, max(0, cut - len(s) + 1), cut + len(s) - 1) if cut < len(data) else -1
                if start != -1 and start < cut < start + len(s):
                    cut, moved = start, True
        return cut


class MaskLogRecords(logging.Filter):
    """Masks a log record's message, arguments and exception text in place, before any handler sees it."""

    def __init__(self, masker: Masker):
        super().__init__()
        self.masker = masker

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.masker:
            return True
        mask = self.masker.mask_text
        record.msg, record.args = mask(record.getMessage()), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask(record.exc_text)
        if record.stack_info:
            record.stack_info = mask(record.stack_info)
        return True


@contextmanager
def masked_logs(masker: Masker, logger: logging.Logger | None = None) -> Iterator[None]:
    """While the block runs, every record of the "sshexec" logger passes `masker`.

    A logger's filters see only the records logged on that logger itself: library
    code logs through logging.getLogger("sshexec"), never a child of it.
    """
    logger = logger or logging.getLogger("sshexec")
    f = MaskLogRecords(masker)
    logger.addFilter(f)
    try:
        yield
    finally:
        logger.removeFilter(f)
