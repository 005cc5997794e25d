"""What each lab image is: its recipe, as data, and the hash that names it in the cache.

    worker      debootstrap + openssh-server, sudo, procps, fish, tcsh and the host's
                docker CLI; users deploy (group docker), nodocker (sudo docker only),
                deploy-fish and deploy-tcsh (group docker, login shells fish and tcsh)
    tools       debootstrap + python3 (bash comes with minbase)
    busybox     busybox-static alone: /bin/sh is busybox, no glibc userland
    entrypoint  FROM busybox, ENTRYPOINT ["/bin/sh", "-c"]
    nonroot     FROM tools, USER app (uid 1500)

Nothing is pulled from a registry: .debs come from the Debian mirror that
debootstrap and apt already use (building.py applies the recipes).

A recipe's hash covers the recipe, the files it copies from `files/`, the
docker CLI copied into the worker and, for an image built FROM another, the
base's hash. The tag `sshexec-lab/<name>:<hash12>` is the cache: an image is
built only when no local image has its tag.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from .errors import ImageBuildError

IMAGES: tuple[str, ...] = ("worker", "tools", "busybox", "entrypoint", "nonroot")
REPOSITORY = "sshexec-lab"

# The recipes below are hashed as data; the code that applies them is not.
# Bump this when a change to that code changes what ends up in an image.
RECIPE_VERSION = 1

FILES_DIR = Path(__file__).with_name("files")

PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Debootstrap:
    """A Debian tree from debootstrap, adjusted in place, then `docker import`ed."""

    # Hashed as the recipe's kind. These were the class names when images.py
    # held the recipes: keeping them keeps the tags of images already built.
    KIND: ClassVar[str] = "_Debootstrap"

    include: tuple[str, ...]
    changes: tuple[str, ...]  # `docker import --change` instructions
    suite: str = "bookworm"
    variant: str = "minbase"
    prune: tuple[str, ...] = ()  # globs removed from the tree
    files: tuple[tuple[str, str, int], ...] = ()  # (name in files/, path in the tree, mode)
    docker_client: bool = False  # copy the host's docker CLI to usr/bin/docker
    setup: tuple[tuple[str, ...], ...] = ()  # argvs run chrooted in the tree, after the copies


@dataclass(frozen=True)
class Busybox:
    """One static busybox binary with a symlink per applet in /bin."""

    KIND: ClassVar[str] = "_Busybox"

    changes: tuple[str, ...]
    package: str = "busybox-static"
    passwd: str = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
    group: str = "root:x:0:\nnogroup:x:65534:\n"


@dataclass(frozen=True)
class Dockerfile:
    """`FROM <base's tag>` plus `body`, built by the legacy builder."""

    KIND: ClassVar[str] = "_Dockerfile"

    base: str
    body: str


Recipe = Debootstrap | Busybox | Dockerfile

# What debootstrap leaves that no image needs: the .debs and package indexes
# (~90 MB), and the build host's hostname and resolver (docker provides both).
_DEBIAN_LEFTOVERS = (
    "var/cache/apt/archives/*.deb",
    "var/lib/apt/lists/*",
    "etc/hostname",
    "etc/resolv.conf",
)

RECIPES: dict[str, Recipe] = {
    "worker": Debootstrap(
        # fish and tcsh: login shells that are not POSIX (deploy-fish, deploy-tcsh).
        include=("openssh-server", "sudo", "procps", "fish", "tcsh"),
        # openssh-server's postinst made host keys; each container makes its own.
        prune=_DEBIAN_LEFTOVERS + ("etc/ssh/ssh_host_*",),
        files=(
            ("worker-start.sh", "usr/local/sbin/sshexec-worker-start", 0o755),
            ("worker-sshd.conf", "etc/ssh/sshd_config.d/sshexec.conf", 0o644),
            ("worker-sudoers", "etc/sudoers.d/sshexec-nodocker", 0o440),
        ),
        docker_client=True,
        setup=(
            # A broken sudoers file would disable sudo altogether.
            ("visudo", "-cf", "/etc/sudoers.d/sshexec-nodocker"),
            # --system keeps gid 1000 free for deploy's own group; the start
            # script sets the real gid from the mounted socket anyway.
            ("groupadd", "--system", "docker"),
            # -p '*': no password, yet not locked the way useradd's '!' is,
            # which sshd refuses even for key logins when PAM is off.
            ("useradd", "-m", "-u", "1000", "-s", "/bin/bash", "-G", "docker", "-p", "*", "deploy"),
            ("useradd", "-m", "-u", "1001", "-s", "/bin/bash", "-p", "*", "nodocker"),
            ("useradd", "-m", "-u", "1002", "-s", "/usr/bin/fish", "-G", "docker", "-p", "*", "deploy-fish"),
            ("useradd", "-m", "-u", "1003", "-s", "/usr/bin/tcsh", "-G", "docker", "-p", "*", "deploy-tcsh"),
        ),
        changes=(f"ENV {PATH}", "EXPOSE 22", 'CMD ["/usr/local/sbin/sshexec-worker-start"]'),
    ),
    "tools": Debootstrap(
        include=("python3",),
        prune=_DEBIAN_LEFTOVERS,
        changes=(f"ENV {PATH}", 'CMD ["/bin/bash"]'),
    ),
    "busybox": Busybox(changes=(f"ENV {PATH}", 'CMD ["/bin/sh"]')),
    "entrypoint": Dockerfile(base="busybox", body='ENTRYPOINT ["/bin/sh", "-c"]\nCMD ["echo hi"]\n'),
    "nonroot": Dockerfile(base="tools", body="RUN useradd -u 1500 -m app\nUSER app\n"),
}


def recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown lab image {name!r}; known: {', '.join(IMAGES)}") from None


def with_bases(names: Iterable[str]) -> list[str]:
    """`names` plus every base they are built FROM, in IMAGES order (bases first)."""
    todo = set(names)
    for name in list(todo):
        r = recipe(name)
        while isinstance(r, Dockerfile):
            todo.add(r.base)
            r = recipe(r.base)
    return [name for name in IMAGES if name in todo]


def docker_client() -> Path:
    """The docker CLI to copy into the worker.

    docker.io's /usr/bin/docker first: it is linked against bookworm's libc,
    like the worker's tree. Whatever `docker` is on PATH otherwise.
    """
    for candidate in ("/usr/bin/docker", shutil.which("docker")):
        if candidate and os.path.isfile(candidate):
            return Path(candidate).resolve()
    raise ImageBuildError(
        "worker",
        "no docker client on this machine to copy into the worker image",
        hint="install one: apt-get install docker.io",
    )


def recipe_hash(name: str) -> str:
    """sha256 hex of everything that goes into image `name`; changes iff its recipe does."""
    r = recipe(name)
    doc = {
        "recipe_version": RECIPE_VERSION,
        "name": name,
        "kind": r.KIND,
        "recipe": dataclasses.asdict(r),
    }
    if isinstance(r, Debootstrap):
        doc["files_sha256"] = {src: sha256_file(FILES_DIR / src) for src, _, _ in r.files}
        if r.docker_client:
            doc["docker_client_sha256"] = sha256_file(docker_client())
    elif isinstance(r, Dockerfile):
        doc["base_recipe_hash"] = recipe_hash(r.base)
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def image_tag(name: str, digest: str) -> str:
    return f"{REPOSITORY}/{name}:{digest[:12]}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
