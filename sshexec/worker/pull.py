"""Pulling an image on a worker: logging in with the feed's credentials, progress, retries, and noting what sshexec pulled.

gc --images (ops/gc.py) may remove only the images recorded here as pulled
by sshexec, and only when no run uses them.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Callable

from ..config.inventory import Feed
from ..core.retry import retry
from ..core.secrets import Secret
from ..errors import PullError, WorkerError
from ..ssh import Connection
from .coord import ROOT_SH
from .docker import PULL, ImageInfo
from .docker_errors import is_transient, pull_error
from .scriptlet import Scriptlet

log = logging.getLogger("sshexec")

PULL_TIMEOUT = 1800.0
PULL_ATTEMPTS = 3
PULL_DELAY, PULL_MAX_DELAY = 1.0, 8.0  # waits of 1 s then 2 s, less jitter

# Record that sshexec pulled image ID as REF here (its last use is now).
RECORD = Scriptlet(
    "record",
    r"""
root=$1 id=$2 ref=$3
""" + ROOT_SH + r"""
case $id in "" | *[!0-9a-f]*) exit 2 ;; esac
I=$C/images
mkdir -p "$I" || exit 101
grep -qxF -- "$ref" "$I/$id" 2>/dev/null || printf '%s\n' "$ref" >>"$I/$id" || exit 101
printf '' >"$I/$id.used"
""",
)


@dataclass
class PullProgress:
    """Layers seen in `docker pull` output: enough for a progress bar."""

    layers: set = field(default_factory=set)
    done: set = field(default_factory=set)
    status: str = ""
    downloaded: bool = False  # the image was not all here before: sshexec pulled it (record_pull notes it for gc)

    _LINE = re.compile(rb"^([0-9a-f]{12}): (.*)$")

    def feed(self, line: bytes) -> bool:
        m = self._LINE.match(line.strip())
        if not m:
            text = line.strip().decode("utf-8", "replace")
            if text:
                self.status = text[:80]
                self.downloaded = self.downloaded or text.startswith("Status: Downloaded newer image")
            return False
        layer, what = m.group(1), m.group(2)
        self.layers.add(layer)
        if what.startswith((b"Pull complete", b"Already exists")):
            self.done.add(layer)
        return True


def pull_image(
    conn: Connection,
    image: str,
    feed: Feed | None,
    password: Secret | None,
    *,
    cfg_dir: str,
    on_pull: Callable[[PullProgress], None] | None = None,
    cancel=None,
    attempts: int = PULL_ATTEMPTS,
    sleep: Callable[[float], None] | None = None,
) -> ImageInfo:
    """docker pull on the worker, logging in first with the feed's credentials when it has some.

    The credentials go to a DOCKER_CONFIG under work_root/`cfg_dir` that the
    scriptlet removes on every exit path; the password travels on stdin.
    Transient registry failures are retried with backoff: at most
    sum(retry.delays(PULL_ATTEMPTS, PULL_DELAY, 2, PULL_MAX_DELAY)) = 3 s of waiting
    with the defaults; a cancel ends the wait at once.
    """
    w = conn.worker
    login = feed is not None and feed.username is not None
    args = (image, feed.registry if login else "", feed.username if login else "", w.work_root, cfg_dir)
    stdin = password.reveal().encode() if login and password else b""
    tried = [0]

    def attempt() -> ImageInfo:
        tried[0] += 1
        progress = PullProgress()
        pending = bytearray()
        out_tail = bytearray()

        def on_out(data: bytes) -> None:
            pending.extend(data)
            *complete, rest = bytes(pending).split(b"\n")
            pending[:] = rest
            for line in complete:
                progress.feed(line)
            if on_pull:
                on_pull(progress)
            out_tail.extend(data)
            del out_tail[:-8192]

        err = bytearray()
        code = conn.stream(PULL.command(w.docker, *args), stdin=stdin, on_stdout=on_out, on_stderr=err.extend, timeout=PULL_TIMEOUT, cancel=cancel)
        text = bytes(out_tail).decode("utf-8", "replace")
        if code == 0:
            m = re.search(r"^image\t([^\t]*)\t(.*)$", text, re.M)
            if m:
                info = ImageInfo.parse(image, m.group(2).split("\t"))
                if progress.downloaded:
                    record_pull(conn, image, info.id)  # gc --images may remove what sshexec pulled, and only that
                return info
            raise PullError(w.name, f"pulled {image} but could not inspect it: {text[-300:]}")
        raise pull_error(w, image, code, bytes(err).decode("utf-8", "replace") + "\n" + text, feed.name if feed else None)

    def warn(n: int, exc: BaseException, wait: float) -> None:
        log.warning("%s: pull of %s failed (%s); retrying in %.1fs (%d/%d)", w.name, image, getattr(exc, "message", exc), wait, n, attempts)

    try:
        return retry(attempt, attempts=attempts, delay=PULL_DELAY, max_delay=PULL_MAX_DELAY, retry_if=is_transient, cancel=cancel, on_retry=warn, sleep=sleep)
    except WorkerError as exc:
        if tried[0] > 1:
            exc.message += f" (after {tried[0]} attempts)"
        raise


def record_pull(conn: Connection, image: str, image_id: str) -> None:
    """Note on the worker that sshexec pulled `image` (so that gc --images may remove it later)."""
    w = conn.worker
    hex_id = image_id.removeprefix("sha256:")
    try:
        res = conn.run(RECORD.command(w.docker, w.work_root, hex_id, image), timeout=30)
        if not res.ok:
            log.info("%s: could not record the pull of %s: %s", w.name, image, res.tail(2))
    except WorkerError as exc:
        log.info("%s: could not record the pull of %s: %s", w.name, image, exc.message)
