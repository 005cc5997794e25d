"""Artifacts in the database: stored in chunks as they arrive, streamed back a chunk at a time.

A file a step collected is written CHUNK bytes per row of artifact_chunks,
each row in its own transaction, while SFTP reads it from the worker; its
row in `artifacts` comes last, so a reader never sees half a file. Nobody ever
holds more than a chunk of it in memory: not the run, not the server sending
it, not `sshexec artifact`.

A file larger than the cap (SSHEXEC_ARTIFACT_MAX, default 1G; `run
--artifact-max`) is refused with a message that says so, before any byte is
read when the worker already reports the size, and as soon as it passes the
cap when it grew meanwhile: never truncated.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

from sqlalchemy import delete, insert, select

from ..core.units import human_size, parse_size
from ..errors import InputError
from .schema import artifact_chunks, artifacts

CHUNK = 1024 * 1024
DEFAULT_MAX = 1 << 30
RAISE_IT = "raise the cap with run --artifact-max SIZE or SSHEXEC_ARTIFACT_MAX"


class TooBig(Exception):
    """The artifact passed the cap; nothing of it is kept."""


def _parse(text: str, what: str) -> int:
    try:
        n = parse_size(text)
    except ValueError as exc:
        raise InputError(f"{what}: {exc}") from None
    if n <= 0:
        raise InputError(f"{what} must be more than 0, not {text!r}")
    return n


def size_cap(given: str | int | None = None) -> int:
    """The cap on one artifact: `given` (run --artifact-max), else $SSHEXEC_ARTIFACT_MAX, else 1G."""
    if isinstance(given, int):
        return given
    if given:
        return _parse(given, "--artifact-max")
    env = os.environ.get("SSHEXEC_ARTIFACT_MAX")
    return _parse(env, "SSHEXEC_ARTIFACT_MAX") if env else DEFAULT_MAX


@dataclass(frozen=True)
class RunArtifacts:
    """Where one run's steps put the files they collect (StepContext.artifacts)."""

    db: object
    run_id: str
    limit: int = DEFAULT_MAX

    def has(self, worker: str, name: str) -> bool:
        a = artifacts.c
        with self.db.read() as c:
            return c.execute(select(a.name).where(a.run_id == self.run_id, a.worker == worker, a.name == name)).first() is not None

    def writer(self, step: str, worker: str, name: str) -> "ArtifactWriter":
        return ArtifactWriter(self.db, self.run_id, step, worker, name, self.limit)

    def too_big(self, name: str, size: int) -> str:
        """The refusal of an artifact of `size` bytes, or "" if it fits."""
        if size <= self.limit:
            return ""
        return f"artifact {name!r} is {human_size(size)}, more than the cap of {human_size(self.limit)}: not stored ({RAISE_IT})"

    def grew(self, name: str) -> str:
        """The refusal of an artifact that passed the cap while it was read."""
        return f"artifact {name!r} grew past the cap of {human_size(self.limit)} while it was read: not stored ({RAISE_IT})"


class ArtifactWriter:
    """A file-like sink for one artifact: `write()` as SFTP reads; the row is recorded by `__exit__` if all went well."""

    def __init__(self, db, run_id: str, step: str, worker: str, name: str, limit: int):
        self.db, self.run_id, self.step, self.worker, self.name, self.limit = db, run_id, step, worker, name, limit
        self.size = 0
        self._seq = 0
        self._buf = bytearray()

    def write(self, data: bytes) -> int:
        self.size += len(data)
        if self.size > self.limit:
            raise TooBig(self.name)
        self._buf += data
        while len(self._buf) >= CHUNK:
            self._put(bytes(self._buf[:CHUNK]))
            del self._buf[:CHUNK]
        return len(data)

    def _put(self, data: bytes) -> None:
        with self.db.write() as c:
            c.execute(insert(artifact_chunks).values(run_id=self.run_id, worker=self.worker, name=self.name, seq=self._seq, data=data))
        self._seq += 1

    def __enter__(self) -> "ArtifactWriter":
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if kind is not None:
            self._discard()
            return
        if self._buf or self._seq == 0:
            self._put(bytes(self._buf))
            self._buf.clear()
        with self.db.write() as c:
            c.execute(insert(artifacts).values(run_id=self.run_id, step=self.step, worker=self.worker, name=self.name, size=self.size, chunks=self._seq))

    def _discard(self) -> None:
        ac = artifact_chunks.c
        with self.db.write() as c:
            c.execute(delete(artifact_chunks).where(ac.run_id == self.run_id, ac.worker == self.worker, ac.name == self.name))


def artifact(db, run_id: str, worker: str, name: str) -> dict | None:
    """The artifact's row (step, size, chunks), or None if the run has no such artifact."""
    a = artifacts.c
    with db.read() as c:
        row = c.execute(select(a.step, a.size, a.chunks).where(a.run_id == run_id, a.worker == worker, a.name == name)).first()
    return None if row is None else {"step": row[0], "size": row[1], "chunks": row[2]}


def chunks(db, run_id: str, worker: str, name: str, count: int) -> Iterator[bytes]:
    """The artifact's bytes, one chunk (one query) at a time: memory stays at a chunk, however big the file."""
    ac = artifact_chunks.c
    for seq in range(count):
        with db.read() as c:
            data = c.execute(select(ac.data).where(ac.run_id == run_id, ac.worker == worker, ac.name == name, ac.seq == seq)).scalar()
        if data is None:
            raise LookupError(f"artifact {worker}/{name} of run {run_id}: chunk {seq} of {count} is missing")
        yield bytes(data)
