"""known_hosts read as OpenSSH reads it: every line, its markers, hashed names, patterns and negation.

    KnownHosts.load(path)    the file's lines (cached while the file is unchanged)
    .lookup(host, port)      what it says about one host: its plain keys, and the CAs trusted for it
    .revoked(blob)           the `@revoked` line of a key, if any

A line is `[MARKER] HOSTS KEYTYPE BASE64 [COMMENT]` (sshd(8), SSH_KNOWN_HOSTS
FILE FORMAT). MARKER is `@cert-authority` (the key is a CA: hosts whose host
certificate it signed are trusted) or `@revoked` (the key must never be
accepted). HOSTS is a comma-separated list of patterns (`*`, `?`, `!` to
negate: a host matching a negated pattern is not matched by the line at all)
or one hashed name (`|1|SALT|HASH`, HMAC-SHA1 of the name). A host off port 22
is named `[host]:port`. A line that cannot be read (an unknown marker, bad
base64, a key type that does not match its key) is skipped, as OpenSSH does,
and never stops the others from being read.

paramiko's own HostKeys reader fails on a whole file when one line carries a
marker, so this module reads the file itself and knows keys by their wire
form (their base64 decoded): no key type needs to be understood to be
matched, revoked or shown.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import threading
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

log = logging.getLogger("sshexec")

CA = "@cert-authority"
REVOKED = "@revoked"


def known_hosts_name(host: str, port: int) -> str:
    """The name a host has in known_hosts: `host`, or `[host]:port` off port 22."""
    return host if port == 22 else f"[{host}]:{port}"


def blob_fingerprint(blob: bytes) -> str:
    """OpenSSH's SHA256 fingerprint of a key in its wire form."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def blob_type(blob: bytes) -> str:
    """The key type a wire-form key names first ('' if it names none)."""
    if len(blob) < 4:
        return ""
    n = int.from_bytes(blob[:4], "big")
    return blob[4 : 4 + n].decode("ascii", "replace") if 4 + n <= len(blob) else ""


def _pattern_matches(name: str, pattern: str) -> bool:
    # OpenSSH's match_pattern: `*` and `?` only (no [] classes), case-insensitive for host names.
    escaped = pattern.replace("[", "[[]")
    return fnmatchcase(name, escaped)


def _hashed_matches(name: str, entry: str) -> bool:
    """`|1|SALT|HASH`: HMAC-SHA1 of the name keyed with SALT."""
    parts = entry.split("|")
    if len(parts) != 4 or parts[1] != "1":
        return False
    try:
        salt, want = base64.b64decode(parts[2], validate=True), base64.b64decode(parts[3], validate=True)
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(hmac.new(salt, name.encode(), hashlib.sha1).digest(), want)


def hosts_match(hosts: str, name: str) -> bool:
    """Whether a HOSTS field matches `name` (`host` or `[host]:port`), by OpenSSH's rules."""
    if hosts.startswith("|"):
        return _hashed_matches(name, hosts)
    name = name.lower()
    positive = False
    for pattern in hosts.split(","):
        negated = pattern.startswith("!")
        pattern = pattern[1:] if negated else pattern
        if not pattern or not _pattern_matches(name, pattern.lower()):
            continue
        if negated:
            return False  # a negated match overrides every other pattern of the line
        positive = True
    return positive


@dataclass(frozen=True)
class Line:
    """One key line of a known_hosts file."""

    path: str
    number: int
    marker: str | None  # CA, REVOKED or None (a plain host key)
    hosts: str  # the HOSTS field as written
    key_type: str
    blob: bytes  # the key in its wire form

    @property
    def fingerprint(self) -> str:
        return blob_fingerprint(self.blob)

    @property
    def where(self) -> str:
        return f"{self.path}:{self.number}"

    def describe(self) -> str:
        """'ssh-ed25519 SHA256:… (known_hosts:3)'."""
        return f"{self.key_type} {self.fingerprint} ({self.where})"


def parse_line(path: str, number: int, text: str) -> Line | None:
    """A known_hosts line, or None for a comment, a blank line or a line OpenSSH would skip."""
    words = text.split()
    if not words or words[0].startswith("#"):
        return None
    marker = None
    if words[0].startswith("@"):
        if words[0] not in (CA, REVOKED):
            log.debug("%s:%d: unknown marker %s: line skipped", path, number, words[0])
            return None
        marker, words = words[0], words[1:]
    if len(words) < 3:
        log.debug("%s:%d: not HOSTS KEYTYPE KEY: line skipped", path, number)
        return None
    hosts, key_type, data = words[:3]
    try:
        blob = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        log.debug("%s:%d: the key is not base64: line skipped", path, number)
        return None
    if blob_type(blob) != key_type:
        log.debug("%s:%d: the key is not of type %s: line skipped", path, number, key_type)
        return None
    return Line(path, number, marker, hosts, key_type, blob)


@dataclass(frozen=True)
class HostEntry:
    """What known_hosts says about one host: its plain keys and the CAs it trusts for it."""

    name: str  # `host` or `[host]:port`
    keys: tuple[Line, ...]
    cas: tuple[Line, ...]

    def key(self, blob: bytes) -> Line | None:
        return next((k for k in self.keys if k.blob == blob), None)

    def ca(self, blob: bytes) -> Line | None:
        return next((c for c in self.cas if c.blob == blob), None)

    @property
    def key_types(self) -> list[str]:
        return list(dict.fromkeys(k.key_type for k in self.keys))


@dataclass(frozen=True)
class KnownHosts:
    """The lines of one known_hosts file."""

    path: str
    lines: tuple[Line, ...]

    @classmethod
    def read(cls, path: Path) -> "KnownHosts":
        """Read `path` (empty if it does not exist); OSError if it cannot be read."""
        try:
            text = path.read_text(errors="replace")
        except FileNotFoundError:
            return cls(str(path), ())
        found = (parse_line(str(path), i, raw) for i, raw in enumerate(text.splitlines(), 1))
        return cls(str(path), tuple(x for x in found if x is not None))

    @classmethod
    def load(cls, path: Path) -> "KnownHosts":
        """As read(), cached while the file is unchanged (its inode, size and mtime)."""
        try:
            st = path.stat()
        except FileNotFoundError:
            return cls(str(path), ())
        key = (str(path), st.st_ino, st.st_mtime_ns, st.st_size)
        with _cache_lock:
            found = _cache.get(key)
            if found is None:
                found = cls.read(path)
                _cache.clear()  # one file per inventory, in practice: keep the newest only
                _cache[key] = found
            return found

    def lookup(self, host: str, port: int) -> HostEntry:
        name = known_hosts_name(host, port)
        keys = tuple(x for x in self.lines if x.marker is None and hosts_match(x.hosts, name))
        cas = tuple(x for x in self.lines if x.marker == CA and hosts_match(x.hosts, name))
        return HostEntry(name, keys, cas)

    def revoked(self, blob: bytes) -> Line | None:
        """The `@revoked` line for this key. A revoked key is refused for every host, whatever the
        line's host patterns say: "must not ever be accepted" (sshd(8))."""
        return next((x for x in self.lines if x.marker == REVOKED and x.blob == blob), None)


_cache: dict[tuple[str, int, int, int], KnownHosts] = {}
_cache_lock = threading.Lock()
