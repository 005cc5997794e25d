"""The step bundle (script + files/ + ctl/) and the executor, as tar streams.

A bundle is streamed straight into the SSH channel: it is never held whole in
memory. Symlinks in `files:` are kept as links only when they point inside
the directory; anything pointing out, and special files, are refused.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
import time
from pathlib import Path
from typing import Callable

from ..errors import InputError
from ..executor import executor_files

CHUNK = 256 * 1024


class _Sink(io.RawIOBase):
    """A write-only file that hands its bytes to `send` in chunks."""

    def __init__(self, send: Callable[[bytes], None]):
        self.send = send
        self.buf = bytearray()
        self.total = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.buf += data
        if len(self.buf) >= CHUNK:
            self._drain()
        return len(data)

    def _drain(self) -> None:
        if self.buf:
            data = bytes(self.buf)
            self.buf.clear()
            self.total += len(data)
            self.send(data)

    def flush(self) -> None:
        self._drain()


def _dir(name: str, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    info.mtime = int(time.time())
    return info


def _file(name: str, data: bytes, mode: int = 0o644) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = int(time.time())
    return info, io.BytesIO(data)


def check_files(root: Path) -> tuple[int, int]:
    """Refuse what cannot be shipped safely; return (file count, total bytes)."""
    count = size = 0
    real_root = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = p.relative_to(root)
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(p)
                if os.path.isabs(target):
                    raise InputError(f"files: {rel} is a symlink to an absolute path ({target}); only links inside the directory can be shipped")
                resolved = (p.parent / target).resolve()
                if resolved != real_root and real_root not in resolved.parents:
                    raise InputError(f"files: {rel} is a symlink pointing outside the directory ({target}); refusing to ship it")
            elif stat.S_ISREG(st.st_mode):
                count += 1
                size += st.st_size
            elif not stat.S_ISDIR(st.st_mode):
                raise InputError(f"files: {rel} is not a regular file, directory or symlink; refusing to ship it")
    return count, size


def write_bundle(send: Callable[[bytes], None], *, script: bytes, files: Path | None, under: str = "") -> int:
    """Stream the step's bundle as tar into `send`; return the bytes sent.

    Layout (relative to the step directory): script, files/..., ctl/. With `under` ("RUN/WORKER/STEP"),
    relative to work_root's runs/ instead: the run's and the worker's directories (0700) and the step's
    (0755) come first, so that unpacking it makes them, with no mkdir (GO, docker.py).
    """
    sink = _Sink(send)
    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.GNU_FORMAT, bufsize=CHUNK) as tar:
        prefix = ""
        if under:
            run, worker, step = under.split("/")
            tar.addfile(_dir(run, 0o700))
            tar.addfile(_dir(f"{run}/{worker}", 0o700))
            tar.addfile(_dir(under, 0o755))
            prefix = under + "/"
        tar.addfile(*_file(prefix + "script", script))
        tar.addfile(_dir(prefix + "files", 0o777))
        tar.addfile(_dir(prefix + "ctl", 0o777))
        if files is not None:
            check_files(files)
            for dirpath, dirnames, filenames in os.walk(files):
                dirnames.sort()
                for name in sorted(dirnames) + sorted(filenames):
                    p = Path(dirpath) / name
                    arc = prefix + "files/" + str(p.relative_to(files))
                    info = tar.gettarinfo(str(p), arcname=arc)
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    if info.isreg():
                        with open(p, "rb") as fh:
                            tar.addfile(info, fh)
                    else:
                        tar.addfile(info)
    sink.flush()
    return sink.total


def bundle_digest(script: bytes, files: Path | None) -> str:
    """SHA-256 of what a bundle holds: the script, then each file under files: (its path, mode and bytes), in order.
    The same content gives the same hash on any machine (the tar's times and owners are left out)."""
    h = hashlib.sha256()
    h.update(b"script\0%d\0" % len(script) + script)
    if files is not None:
        for dirpath, dirnames, filenames in os.walk(files):
            dirnames.sort()
            for name in sorted(filenames):
                p = Path(dirpath) / name
                st = p.lstat()
                # File names are bytes (any but / and NUL, not necessarily UTF-8): os.fsencode gives them back as such.
                h.update(b"\0file\0" + os.fsencode(p.relative_to(files)) + f"\0{st.st_mode & 0o777:o}\0{st.st_size}\0".encode())
                if p.is_symlink():
                    h.update(os.fsencode(os.readlink(p)))
                elif p.is_file():
                    with open(p, "rb") as fh:
                        for chunk in iter(lambda: fh.read(CHUNK), b""):
                            h.update(chunk)
    return h.hexdigest()


def executor_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in sorted(executor_files().items()):
            tar.addfile(*_file(name, data, 0o644))
    return buf.getvalue()
