"""The executor's wire format, both ways.

To the executor (its stdin): a header of lines, values encoded so that the
executor's `printf "$enc"` decodes them and nothing else can happen::

    sshexec 1
    nonce <32 hex>
    syntax bash|sh|python
    run <run id> / step <name> / worker <name>
    allow <name>            a loader name the executor may export (the runbook's own value)
    var <name> <encoded value>
    end

From the executor (its stdout): service messages, one per line::

    ##sshexec[<nonce>] set <hex name> <hex value> <0|1 sensitive>
    ##sshexec[<nonce>] artifact <hex path> <hex name>
    ##sshexec[<nonce>] fail <hex message>
    ##sshexec[<nonce>] missing <interpreter>
    ##sshexec[<nonce>] started                (on stderr, just before the script starts)

The nonce is random per step and travels only on stdin, so ordinary output
(of this step or of any other) cannot be mistaken for a message. Empty hex
fields are written as "-".
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_./:=+,@")
_OCTAL = [f"\\{b:03o}" for b in range(256)]
_PLAIN = [chr(b) if b in _SAFE else _OCTAL[b] for b in range(256)]

VAR_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\[\]-]{0,255}")


def encode_value(value: str) -> str:
    """Octal-escape every byte outside a small safe set (no %, \\, -, space or quote survives)."""
    data = value.encode("utf-8", "surrogateescape")
    if b"\0" in data:
        raise ValueError("a value cannot contain a NUL byte")
    return "".join(_PLAIN[b] for b in data)


def new_nonce() -> str:
    return secrets.token_hex(16)


def header(*, nonce: str, syntax: str, variables: dict[str, str], context: dict[str, str] | None = None, allow=()) -> bytes:
    """The executor's stdin. `context` (run, step, worker) becomes SSHEXEC_RUN_ID, SSHEXEC_STEP, SSHEXEC_WORKER.

    `allow`: the loader names (config/variables.py) the executor may export; it exports no other.
    """
    lines = ["sshexec 1", f"nonce {nonce}", f"syntax {syntax}"]
    for key, value in (context or {}).items():
        if key not in ("run", "step", "worker") or not re.fullmatch(r"[A-Za-z0-9_.-]+", value):
            raise ValueError(f"bad context {key}={value!r}")
        lines.append(f"{key} {value}")
    for name in sorted(allow):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"bad loader name {name!r}")
        lines.append(f"allow {name}")
    for name, value in variables.items():
        if not VAR_NAME.fullmatch(name):
            raise ValueError(f"bad variable name {name!r}")
        lines.append(f"var {name} {encode_value(value)}")
    lines.append("end")
    return ("\n".join(lines) + "\n").encode()


def marker(nonce: str) -> bytes:
    return f"##sshexec[{nonce}] ".encode()


@dataclass(frozen=True)
class Message:
    kind: str
    args: tuple[str, ...]


def _unhex(field: str) -> str:
    if field == "-":
        return ""
    return bytes.fromhex(field).decode("utf-8", "surrogateescape")


def parse_message(body: bytes) -> Message | None:
    """Decode the part of a line after the marker; None if it is malformed."""
    try:
        words = body.decode("ascii").strip().split(" ")
    except UnicodeDecodeError:
        return None
    kind, fields = words[0], words[1:]
    try:
        if kind == "set" and len(fields) == 3 and fields[2] in ("0", "1"):
            return Message("set", (_unhex(fields[0]), _unhex(fields[1]), fields[2]))
        if kind == "artifact" and len(fields) == 2:
            return Message("artifact", (_unhex(fields[0]), _unhex(fields[1])))
        if kind == "fail" and len(fields) == 1:
            return Message("fail", (_unhex(fields[0]),))
        if kind == "started" and not fields:
            return Message("started", ())
        if kind == "missing" and len(fields) == 1 and re.fullmatch(r"[a-z0-9]+", fields[0]):
            return Message("missing", (fields[0],))
    except ValueError:
        return None
    return None
