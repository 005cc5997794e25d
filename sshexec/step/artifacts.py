"""Artifacts: files a script named with new_sshexec_artifact, fetched over SFTP after the step.

Only regular files that resolve, on the worker, inside the step's working
directory are fetched, under plain names, never twice under one name. Each
streams from SFTP into the history's database a chunk at a time
(store/artifacts.py); one larger than the run's cap is refused, never cut.
"""

from __future__ import annotations

import posixpath
import stat
from dataclasses import dataclass

from ..core.secrets import Masker
from ..store.artifacts import RunArtifacts, TooBig
from ..worker.session import WorkerSession

ARTIFACT_NAME_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-+@=,")


@dataclass(frozen=True)
class Artifact:
    name: str
    size: int


def collect_artifacts(
    session: WorkerSession, step: str, s_dir: str, wanted: list[tuple[str, str]], store: RunArtifacts, masker: Masker | None = None
) -> tuple[list[Artifact], list[str]]:
    """Store the files a script named; refuse anything outside its files/ directory, or past the run's size cap."""
    worker = session.worker.name
    files_dir = f"{s_dir}/files"
    collected: list[Artifact] = []
    refused: list[str] = []
    with session.files() as sftp:
        real_files = sftp.normalize(files_dir)
        for path, name in wanted:
            reason = _artifact_refusal(path, name, files_dir)
            if reason is None and masker is not None and masker.mask_text(name) != name:
                reason = f"artifact name {masker.mask_text(name)!r} contains a sensitive value; refused"
            if reason is None:
                try:
                    real = sftp.normalize(path)
                    st = sftp.stat(real)
                except OSError:
                    reason = f"artifact {name!r}: {path} does not exist on the worker"
                else:
                    if not (real + "/").startswith(real_files.rstrip("/") + "/"):
                        reason = f"artifact {name!r}: {path} leads outside the step's directory (symlink?); refused"
                    elif not stat.S_ISREG(st.st_mode or 0):
                        reason = f"artifact {name!r}: {path} is not a regular file; refused"
                    else:
                        reason = store.too_big(name, st.st_size or 0) or None
            if reason is None and store.has(worker, name):
                reason = f"artifact {name!r} was named twice; kept the first"
            if reason is not None:
                refused.append(reason)
                continue
            try:
                with store.writer(step, worker, name) as sink:
                    sftp.getfo(real, sink)
            except TooBig:
                # It grew past the cap while it was read: nothing of it is kept.
                refused.append(store.grew(name))
                continue
            collected.append(Artifact(name, sink.size))
    return collected, refused


def _artifact_refusal(path: str, name: str, files_dir: str) -> str | None:
    if not name or name in (".", "..") or not set(name) <= ARTIFACT_NAME_CHARS or len(name) > 200:
        return f"artifact name {name!r} is not a plain file name (letters, digits, . _ - + @ = ,); refused"
    norm = posixpath.normpath(path)
    if not path.startswith("/") or not (norm + "/").startswith(files_dir + "/") or norm == files_dir:
        return f"artifact {name!r}: {path} is outside the step's working directory; refused"
    return None
