"""The lab's execution images on their way: pushed to the lab's registry, then pulled by each worker's daemon.

With a daemon per worker, every worker has a cache of its own, empty at
first. `seed` pulls the lab's execution images into each worker's daemon
(as `sshexec prepull` would), so runbooks that name them run without a
pull; an image pushed later is pulled by each worker when a step needs it.
Registry credentials live in a DOCKER_CONFIG directory that is removed
whatever happens.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from . import registry
from .proc import docker
from .workerd import WorkerDaemon

Progress = Callable[[str], None]


@contextmanager
def logged_in(host: str | None, address: str, user: str, password: str, parent: Path) -> Iterator[list[str]]:
    """docker's leading arguments for a client logged in to the registry; the credential is deleted after."""
    parent.mkdir(parents=True, exist_ok=True)
    config = Path(tempfile.mkdtemp(prefix="docker-config-", dir=parent))
    config.chmod(0o700)
    try:
        args = ["--config", str(config), *(("--host", host) if host else ())]
        docker(*args, "login", "--username", user, "--password-stdin", address, input=password.encode())
        yield args
    finally:
        shutil.rmtree(config, ignore_errors=True)


def push(images: dict[str, str], pushed: dict[str, str], refs: dict[str, str], *, port: int, user: str, password: str, scratch: Path, say: Progress, verify: bool = True) -> None:
    """Push each local image (name -> local tag) to its registry ref unless that very image is there already.

    `pushed` (name -> image id last pushed) is updated in place. `verify`: ask the
    registry whether it still has what `pushed` says (after it was restarted).
    """
    ids = docker("image", "inspect", "--format", "{{.Id}}", *images.values()).stdout.decode().split()
    todo = []
    for (name, tag), image_id in zip(images.items(), ids):
        repo, _, version = refs[name].split("/", 1)[1].rpartition(":")
        if pushed.get(name) != image_id or (verify and not registry.has_manifest(port, repo, version, user, password)):
            todo.append((name, tag, image_id))
    if not todo:
        return
    with logged_in(None, f"127.0.0.1:{port}", user, password, scratch) as args:
        for name, tag, image_id in todo:
            say(f"push {refs[name]}")
            docker("tag", tag, refs[name])
            docker(*args, "push", refs[name], timeout=1200)
            pushed[name] = image_id


def seed(daemons: Iterable[WorkerDaemon], refs: list[str], *, address: str, user: str, password: str, scratch: Path, say: Progress) -> None:
    """Pull every ref missing from each worker's daemon, daemons in parallel."""

    def one(d: WorkerDaemon) -> None:
        have = set(d.docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}").stdout.decode().split())
        missing = [ref for ref in refs if ref not in have]
        if not missing:
            return
        say(f"{d.worker}: pulling {len(missing)} image(s) into its daemon")
        with logged_in(d.host, address, user, password, scratch) as args:
            for ref in missing:
                docker(*args, "pull", "--quiet", ref, timeout=1200)

    daemons = list(daemons)
    if daemons:
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(one, daemons))
