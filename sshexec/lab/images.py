"""Offline, cached builds of the lab's Docker images.

    worker      debootstrap + openssh-server, sudo, procps, fish, tcsh and the host's
                docker CLI; users deploy (group docker), nodocker (sudo docker only),
                deploy-fish and deploy-tcsh (group docker, login shells fish and tcsh)
    tools       debootstrap + python3 (bash comes with minbase)
    busybox     busybox-static alone: /bin/sh is busybox, no glibc userland
    entrypoint  FROM busybox, ENTRYPOINT ["/bin/sh", "-c"]
    nonroot     FROM tools, USER app (uid 1500)

Nothing is pulled from a registry: .debs come from the Debian mirror that
debootstrap and apt already use, and images are made with `docker import`
or a legacy-builder `docker build` FROM a local image.

Each recipe is data in this module. Its hash covers the recipe, the files it
copies from `files/`, the docker CLI copied into the worker and, for an image
built FROM another, the base's hash. The tag `sshexec-lab/<name>:<hash12>`
is the cache: an image is built only when no local image has its tag.

`build_dir` layout: `debs/<name>/` keeps downloaded .debs across builds,
`rootfs/<name>/` is a scratch tree removed after import, `images.lock`
serialises builders sharing the directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from sshexec.errors import SshexecError

log = logging.getLogger("sshexec.lab")

IMAGES: tuple[str, ...] = ("worker", "tools", "busybox", "entrypoint", "nonroot")
REPOSITORY = "sshexec-lab"

# The recipes below are hashed as data; the code that applies them is not.
# Bump this when a change to that code changes what ends up in an image.
RECIPE_VERSION = 1

# worker and tools debootstrap at the same time (each has its own .deb cache).
# Measured on 2 cores with the .deb caches warm: all five images in 46-52 s
# two at a time, 73 s one at a time.
PARALLEL_BUILDS = 2

FILES_DIR = Path(__file__).with_name("files")

_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_TAIL_LINES = 20

ProgressFn = Callable[[str, str], None]


@dataclass(frozen=True)
class BuiltImage:
    name: str  # one of IMAGES
    tag: str  # local docker tag, "sshexec-lab/<name>:<hash12>"
    recipe_hash: str  # full sha256 hex of the recipe
    built: bool  # True if built now, False if it was already cached


class ImageBuildError(SshexecError, RuntimeError):
    """Building a lab image failed; carries the image, the command and its output tail."""

    def __init__(
        self,
        image: str | None,
        message: str,
        *,
        argv: Iterable[str] = (),
        returncode: int | None = None,
        output: str = "",
        hint: str | None = None,
    ):
        self.image = image
        self.argv = tuple(argv)
        self.returncode = returncode
        self.tail = "\n".join(output.rstrip().splitlines()[-_TAIL_LINES:])
        text = f"lab image {image}: {message}" if image else f"lab images: {message}"
        if self.tail:
            text += "\n" + "\n".join("    " + line for line in self.tail.splitlines())
        super().__init__(text, hint=hint)

    @classmethod
    def command_failed(cls, image: str | None, argv: list[str], returncode: int, output: str):
        return cls(
            image,
            f"`{shlex.join(argv)}` exited {returncode}; last lines of its output:",
            argv=argv,
            returncode=returncode,
            output=output,
        )


# --- recipes -----------------------------------------------------------------


@dataclass(frozen=True)
class _Debootstrap:
    """A Debian tree from debootstrap, adjusted in place, then `docker import`ed."""

    include: tuple[str, ...]
    changes: tuple[str, ...]  # `docker import --change` instructions
    suite: str = "bookworm"
    variant: str = "minbase"
    prune: tuple[str, ...] = ()  # globs removed from the tree
    files: tuple[tuple[str, str, int], ...] = ()  # (name in files/, path in the tree, mode)
    docker_client: bool = False  # copy the host's docker CLI to usr/bin/docker
    setup: tuple[tuple[str, ...], ...] = ()  # argvs run chrooted in the tree, after the copies


@dataclass(frozen=True)
class _Busybox:
    """One static busybox binary with a symlink per applet in /bin."""

    changes: tuple[str, ...]
    package: str = "busybox-static"
    passwd: str = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
    group: str = "root:x:0:\nnogroup:x:65534:\n"


@dataclass(frozen=True)
class _Dockerfile:
    """`FROM <base's tag>` plus `body`, built by the legacy builder."""

    base: str
    body: str


# What debootstrap leaves that no image needs: the .debs and package indexes
# (~90 MB), and the build host's hostname and resolver (docker provides both).
_DEBIAN_LEFTOVERS = (
    "var/cache/apt/archives/*.deb",
    "var/lib/apt/lists/*",
    "etc/hostname",
    "etc/resolv.conf",
)

_RECIPES: dict[str, _Debootstrap | _Busybox | _Dockerfile] = {
    "worker": _Debootstrap(
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
        changes=(f"ENV {_PATH}", "EXPOSE 22", 'CMD ["/usr/local/sbin/sshexec-worker-start"]'),
    ),
    "tools": _Debootstrap(
        include=("python3",),
        prune=_DEBIAN_LEFTOVERS,
        changes=(f"ENV {_PATH}", 'CMD ["/bin/bash"]'),
    ),
    "busybox": _Busybox(changes=(f"ENV {_PATH}", 'CMD ["/bin/sh"]')),
    "entrypoint": _Dockerfile(base="busybox", body='ENTRYPOINT ["/bin/sh", "-c"]\nCMD ["echo hi"]\n'),
    "nonroot": _Dockerfile(base="tools", body="RUN useradd -u 1500 -m app\nUSER app\n"),
}


def _recipe(name: str) -> _Debootstrap | _Busybox | _Dockerfile:
    try:
        return _RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown lab image {name!r}; known: {', '.join(IMAGES)}") from None


def _docker_client() -> Path:
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
    recipe = _recipe(name)
    doc = {
        "recipe_version": RECIPE_VERSION,
        "name": name,
        "kind": type(recipe).__name__,
        "recipe": dataclasses.asdict(recipe),
    }
    if isinstance(recipe, _Debootstrap):
        doc["files_sha256"] = {src: _sha256_file(FILES_DIR / src) for src, _, _ in recipe.files}
        if recipe.docker_client:
            doc["docker_client_sha256"] = _sha256_file(_docker_client())
    elif isinstance(recipe, _Dockerfile):
        doc["base_recipe_hash"] = recipe_hash(recipe.base)
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def image_tag(name: str, digest: str) -> str:
    return f"{REPOSITORY}/{name}:{digest[:12]}"


# --- the cache and the build order -------------------------------------------


def ensure_images(
    names: Iterable[str] = IMAGES,
    *,
    build_dir: Path,
    on_progress: ProgressFn | None = None,
) -> dict[str, BuiltImage]:
    """Build the images in `names` that are not in the local daemon yet (and their bases).

    Returns one BuiltImage per requested name. `on_progress(name, message)`
    may be called from worker threads.
    """
    names = tuple(names)
    wanted = _with_bases(names)  # ValueError for an unknown name
    hashes = {name: recipe_hash(name) for name in wanted}
    tags = {name: image_tag(name, hashes[name]) for name in wanted}
    report = _reporter(on_progress)

    built: set[str] = set()
    missing = _missing(tags)
    if missing:
        build_dir = Path(build_dir).resolve()
        build_dir.mkdir(parents=True, exist_ok=True)
        with _locked(build_dir / "images.lock", report):
            # Another process may have built some while we waited.
            missing = _missing(tags)
            _build_all(missing, tags, build_dir, report)
            built.update(missing)
    for name in wanted:
        if name not in built:
            report(name, f"cached {tags[name]}")
    return {name: BuiltImage(name, tags[name], hashes[name], name in built) for name in names}


def _with_bases(names: Iterable[str]) -> list[str]:
    """`names` plus every base they are built FROM, in IMAGES order (bases first)."""
    todo = set(names)
    for name in list(todo):
        recipe = _recipe(name)
        while isinstance(recipe, _Dockerfile):
            todo.add(recipe.base)
            recipe = _recipe(recipe.base)
    return [name for name in IMAGES if name in todo]


def _missing(tags: dict[str, str]) -> list[str]:
    have = set(
        _run(
            None,
            ["docker", "images", "--filter", f"reference={REPOSITORY}/*", "--format", "{{.Repository}}:{{.Tag}}"],
        ).split()
    )
    return [name for name, tag in tags.items() if tag not in have]


def _build_all(names: list[str], tags: dict[str, str], build_dir: Path, report: ProgressFn) -> None:
    futures: dict[str, Future] = {}
    with ThreadPoolExecutor(max_workers=PARALLEL_BUILDS, thread_name_prefix="lab-image") as pool:
        # `names` lists bases before the images built FROM them, and the pool
        # starts jobs in submission order, so a job waiting for its base never
        # holds a thread the base still needs.
        for name in names:
            recipe = _recipe(name)
            base = futures.get(recipe.base) if isinstance(recipe, _Dockerfile) else None
            futures[name] = pool.submit(_build, name, tags, build_dir, report, base)
    for future in futures.values():
        future.result()  # the first failure in build order; its dependents failed with it


def _build(
    name: str, tags: dict[str, str], build_dir: Path, report: ProgressFn, base: Future | None
) -> None:
    if base is not None:
        base.result()
    recipe = _recipe(name)
    started = time.monotonic()
    labels = (f"sshexec.lab.image={name}", f"sshexec.lab.tag={tags[name]}")
    if isinstance(recipe, _Debootstrap):
        _build_debootstrap(name, recipe, tags[name], labels, build_dir, report)
    elif isinstance(recipe, _Busybox):
        _build_busybox(name, recipe, tags[name], labels, build_dir, report)
    else:
        _build_dockerfile(name, recipe, tags[name], tags[recipe.base], labels, report)
    report(name, f"built {tags[name]} in {time.monotonic() - started:.1f}s")


# --- the three kinds of build ------------------------------------------------


def _build_debootstrap(
    name: str, recipe: _Debootstrap, tag: str, labels: tuple[str, ...], build_dir: Path, report: ProgressFn
) -> None:
    # One .deb cache per image: two debootstraps writing the same file at once
    # would corrupt it.
    cache = build_dir / "debs" / name
    cache.mkdir(parents=True, exist_ok=True)
    with _scratch_tree(build_dir / "rootfs" / name) as rootfs:
        report(name, f"debootstrap {recipe.suite} with {', '.join(recipe.include)}")
        _run(name, _debootstrap_argv(recipe, rootfs, cache))
        for pattern in recipe.prune:
            for path in rootfs.glob(pattern):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        for src, dest, mode in recipe.files:
            _install(FILES_DIR / src, rootfs / dest, mode)
        if recipe.docker_client:
            _install(_docker_client(), rootfs / "usr/bin/docker", 0o755)
        for argv in recipe.setup:
            _run(name, ["chroot", str(rootfs), *argv], env={"PATH": _PATH.removeprefix("PATH="), "LC_ALL": "C"})
        report(name, f"docker import as {tag}")
        _import(name, rootfs, tag, recipe.changes, labels)


def _debootstrap_argv(recipe: _Debootstrap, rootfs: Path, cache: Path) -> list[str]:
    # No mirror argument: debootstrap picks its default Debian mirror.
    return [
        "debootstrap",
        f"--variant={recipe.variant}",
        f"--include={','.join(recipe.include)}",
        f"--cache-dir={cache}",
        recipe.suite,
        str(rootfs),
    ]


def _build_busybox(
    name: str, recipe: _Busybox, tag: str, labels: tuple[str, ...], build_dir: Path, report: ProgressFn
) -> None:
    report(name, f"apt-get download {recipe.package}")
    deb = _download_deb(name, recipe.package, build_dir / "debs" / name)
    with _scratch_tree(build_dir / "rootfs" / name) as rootfs:
        with tempfile.TemporaryDirectory(dir=build_dir) as unpacked:
            _run(name, ["dpkg", "-x", str(deb), unpacked])
            _install(Path(unpacked, "bin/busybox"), rootfs / "bin/busybox", 0o755)
        applets = _run(name, [str(rootfs / "bin/busybox"), "--list"]).split()
        for applet in applets:
            if applet != "busybox":
                (rootfs / "bin" / applet).symlink_to("busybox")
        (rootfs / "etc").mkdir()
        (rootfs / "etc/passwd").write_text(recipe.passwd)
        (rootfs / "etc/group").write_text(recipe.group)
        (rootfs / "root").mkdir(mode=0o700)
        (rootfs / "tmp").mkdir()
        (rootfs / "tmp").chmod(0o1777)  # mkdir's mode is masked by the umask
        report(name, f"docker import as {tag}")
        _import(name, rootfs, tag, recipe.changes, labels)


def _build_dockerfile(
    name: str, recipe: _Dockerfile, tag: str, base_tag: str, labels: tuple[str, ...], report: ProgressFn
) -> None:
    report(name, f"docker build FROM {base_tag}")
    argv = ["docker", "build", "--force-rm", "--network=none", "--tag", tag]
    argv += [arg for label in labels for arg in ("--label", label)]
    # "-": the Dockerfile comes on stdin and there is no build context.
    _run(name, [*argv, "-"], input=f"FROM {base_tag}\n{recipe.body}", env={**os.environ, "DOCKER_BUILDKIT": "0"})


def _download_deb(image: str, package: str, cache: Path) -> Path:
    """The candidate .deb of `package`, fetched by the host's apt unless already in `cache`."""
    cache.mkdir(parents=True, exist_ok=True)

    def fetch() -> Path:
        # `--print-uris` prints "'URI' FILENAME SIZE SHA256:HEX" and fetches
        # nothing, but stays silent if FILENAME is in its working directory:
        # hence an empty one.
        with tempfile.TemporaryDirectory(dir=cache) as empty:
            line = _run(image, ["apt-get", "download", "--print-uris", package], cwd=Path(empty))
        fields = line.split()
        if len(fields) != 4 or not fields[3].startswith("SHA256:"):
            raise ImageBuildError(image, f"cannot read where apt gets {package} from", output=line)
        deb = cache / fields[1]
        if not deb.is_file() or _sha256_file(deb) != fields[3].removeprefix("SHA256:"):
            deb.unlink(missing_ok=True)  # a truncated download
            _run(image, ["apt-get", "-q", "-o", "APT::Sandbox::User=root", "download", package], cwd=cache)
        return deb

    try:
        return fetch()
    except ImageBuildError:
        # A machine whose package indexes were never fetched or were cleaned.
        log.info("%s: apt-get download failed; running apt-get update once", image)
        _run(image, ["apt-get", "-q", "update"])
        return fetch()


def _import(name: str, rootfs: Path, tag: str, changes: tuple[str, ...], labels: tuple[str, ...]) -> None:
    """`tar -C rootfs -c . | docker import --change ... - tag`."""
    tar = ["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."]
    changes += (f"LABEL {' '.join(labels)}",)
    docker = ["docker", "import", *(arg for change in changes for arg in ("--change", change)), "-", tag]
    with tempfile.TemporaryFile() as tar_stderr:
        producer = subprocess.Popen(tar, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=tar_stderr)
        try:
            consumer = subprocess.run(docker, stdin=producer.stdout, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        finally:
            producer.stdout.close()
            producer.wait()
        tar_stderr.seek(0)
        tar_output = tar_stderr.read().decode(errors="replace")
    # The consumer first: when it dies, tar only sees a broken pipe.
    if consumer.returncode:
        output = consumer.stdout.decode(errors="replace")
        raise ImageBuildError.command_failed(name, docker, consumer.returncode, output)
    if producer.returncode:
        raise ImageBuildError.command_failed(name, tar, producer.returncode, tar_output)


# --- helpers -----------------------------------------------------------------


def _run(
    image: str | None,
    argv: list[str],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    input: str | None = None,
) -> str:
    """Run argv to completion and return its combined output; ImageBuildError if it fails."""
    log.debug("%s: running %s", image or "lab images", shlex.join(argv))
    try:
        proc = subprocess.run(
            argv,
            cwd=cwd,
            env=env,
            input=input.encode() if input is not None else None,
            stdin=subprocess.DEVNULL if input is None else None,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
    except OSError as exc:
        raise ImageBuildError(image, f"cannot run `{shlex.join(argv)}`: {exc}", argv=argv) from exc
    output = proc.stdout.decode(errors="replace")
    if proc.returncode:
        raise ImageBuildError.command_failed(image, argv, proc.returncode, output)
    return output


def _install(src: Path, dest: Path, mode: int) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    dest.chmod(mode)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _scratch_tree(path: Path) -> Iterator[Path]:
    """An empty directory at `path`, removed on the way out."""
    _remove_tree(path)  # left by an interrupted build
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        try:
            _remove_tree(path)
        except OSError as exc:
            # Don't hide the build's own error; the next build removes it.
            log.warning("could not remove %s: %s", path, exc)


def _remove_tree(path: Path) -> None:
    """rmtree, after unmounting what an interrupted debootstrap left mounted inside (its /proc)."""
    if not path.exists():
        return
    inside = str(path) + "/"
    for mount_point in sorted(_mount_points(), reverse=True):
        if mount_point.startswith(inside):
            _run(None, ["umount", "--lazy", mount_point])
    shutil.rmtree(path)


def _mount_points() -> Iterator[str]:
    with open("/proc/self/mounts") as fh:
        for line in fh:
            # Spaces and the like are written as octal escapes, e.g. \040.
            yield re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), line.split()[1])


@contextlib.contextmanager
def _locked(path: Path, report: ProgressFn) -> Iterator[None]:
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            report("*", f"waiting for another build holding {path}")
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def _reporter(on_progress: ProgressFn | None) -> ProgressFn:
    def report(name: str, message: str) -> None:
        log.info("%s: %s", name, message)
        if on_progress is not None:
            on_progress(name, message)

    return report
