"""The executor: shipped to each worker, content-addressed, and run inside the container."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from importlib import resources

FILES = ("run.sh", "helpers.sh", "sshexec_helpers.py")


@lru_cache(maxsize=1)
def executor_files() -> dict[str, bytes]:
    root = resources.files(__package__)
    return {name: (root / name).read_bytes() for name in FILES}


@lru_cache(maxsize=1)
def executor_hash() -> str:
    """Content hash of the executor: its directory name on every worker."""
    h = hashlib.sha256()
    for name, data in sorted(executor_files().items()):
        h.update(name.encode() + b"\0" + len(data).to_bytes(8, "big") + data)
    return h.hexdigest()[:20]
