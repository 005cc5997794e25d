"""What a running script says through its service messages: outputs, artifacts, fail_step, and the executor's own.

`Messages.take()` is handed each message body the output pipeline finds
(protocol.py says how they are recognised, with the step's nonce); what it
collects is read once the container ended.
"""

from __future__ import annotations

import logging
from typing import Callable

from ..config.runbook import SET_NAME
from ..core.secrets import MIN_SECRET, Masker, short_secret
from .protocol import parse_message

log = logging.getLogger("sshexec")


class Messages:
    """The service messages of one step on one worker."""

    def __init__(self, worker: str, step: str, masker: Masker, on_output: Callable[[str], None] = lambda name: None):
        self.worker, self.step, self.masker, self.on_output = worker, step, masker, on_output
        self.outputs: dict[str, str] = {}
        self.sensitive: set[str] = set()
        self.artifacts: list[tuple[str, str]] = []  # (path on the worker, name)
        self.failed: str | None = None  # fail_step's message
        self.missing: str | None = None  # the interpreter the executor did not find
        self.started = False  # the executor said "started": what runs after it is the script

    def take(self, body: bytes) -> None:
        msg = parse_message(body)
        where = f"{self.worker}/{self.step}"
        if msg is None:
            log.warning("%s: ignored a malformed service message", where)
            return
        if msg.kind == "set":
            self._set(*msg.args)
        elif msg.kind == "artifact":
            self.artifacts.append((msg.args[0], msg.args[1]))
        elif msg.kind == "fail":
            self.failed = msg.args[0]
        elif msg.kind == "missing":
            self.missing = msg.args[0]
        elif msg.kind == "started":
            self.started = True

    def _set(self, var: str, value: str, flag: str) -> None:
        where = f"{self.worker}/{self.step}"
        if not SET_NAME.fullmatch(var):
            log.warning("%s: ignored an output variable with a bad name", where)
            return
        if flag == "1":
            self.masker.add(value)
            if value and len(value) < MIN_SECRET and var not in self.sensitive:
                # Masked all the same (it is a secret), and said once; logged after add(), so the
                # masker covers this message too, in case the name holds the value.
                log.warning(
                    "%s: the sensitive output %s %s: it is masked wherever those characters appear, even inside "
                    "other words; set a longer value, or drop --sensitive if it is no secret", where, var, short_secret(value),
                )  # fmt: skip
            self.sensitive.add(var)
        self.outputs[var] = value
        self.on_output(var)
