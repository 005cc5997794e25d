"""Artifacts: files a script named with new_sshexec_artifact, fetched over SFTP after the step.

Only regular files that resolve, on the worker, inside the step's working
directory are fetched, under plain names, never over an existing file.
"""

from __future__ import annotations

import os
import posixpath
import stat
from dataclasses import dataclass
from pathlib import Path

from ..core.secrets import Masker
from ..worker.session import WorkerSession

ARTIFACT_NAME_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-+@=,")


@dataclass(frozen=True)
class Artifact:
    name: str
    path: Path
    size: int


def collect_artifacts(session: WorkerSession, s_dir: str, wanted: list[tuple[str, str]], dest: Path, masker: Masker | None = None) -> tuple[list[Artifact], list[str]]:
    """Download the files a script named; refuse anything outside its files/ directory."""
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
            if reason is not None:
                refused.append(reason)
                continue
            dest.mkdir(parents=True, exist_ok=True, mode=0o700)
            target = dest / name
            if target.exists():
                refused.append(f"artifact {name!r} was named twice; kept the first")
                continue
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as fh:
                sftp.getfo(real, fh)
            collected.append(Artifact(name, target, target.stat().st_size))
    return collected, refused


def _artifact_refusal(path: str, name: str, files_dir: str) -> str | None:
    if not name or name in (".", "..") or not set(name) <= ARTIFACT_NAME_CHARS or len(name) > 200:
        return f"artifact name {name!r} is not a plain file name (letters, digits, . _ - + @ = ,); refused"
    norm = posixpath.normpath(path)
    if not path.startswith("/") or not (norm + "/").startswith(files_dir + "/") or norm == files_dir:
        return f"artifact {name!r}: {path} is outside the step's working directory; refused"
    return None
