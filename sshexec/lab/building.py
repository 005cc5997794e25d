"""Building the lab's images offline, with a cache keyed by recipe hash (recipes.py says what each is).

Images are made with `docker import` of a debootstrap or busybox tree, or a
legacy-builder `docker build` FROM a local image; nothing is pulled.

`build_dir` layout: `debs/<name>/` keeps downloaded .debs across builds,
`rootfs/<name>/` is a scratch tree removed after import, `images.lock`
serialises builders sharing the directory.
"""

from __future__ import annotations

import contextlib
import fcntl
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

from . import recipes
from .errors import ImageBuildError
from .recipes import IMAGES, REPOSITORY, Busybox, Debootstrap, Dockerfile

log = logging.getLogger("sshexec.lab")

# worker and tools debootstrap at the same time (each has its own .deb cache).
# Measured on 2 cores with the .deb caches warm: all five images in 46-52 s
# two at a time, 73 s one at a time.
PARALLEL_BUILDS = 2

ProgressFn = Callable[[str, str], None]


@dataclass(frozen=True)
class BuiltImage:
    name: str  # one of IMAGES
    tag: str  # local docker tag, "sshexec-lab/<name>:<hash12>"
    recipe_hash: str  # full sha256 hex of the recipe
    built: bool  # True if built now, False if it was already cached


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
    wanted = recipes.with_bases(names)  # ValueError for an unknown name
    hashes = {name: recipes.recipe_hash(name) for name in wanted}
    tags = {name: recipes.image_tag(name, hashes[name]) for name in wanted}
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
            r = recipes.recipe(name)
            base = futures.get(r.base) if isinstance(r, Dockerfile) else None
            futures[name] = pool.submit(_build, name, tags, build_dir, report, base)
    for future in futures.values():
        future.result()  # the first failure in build order; its dependents failed with it


def _build(
    name: str, tags: dict[str, str], build_dir: Path, report: ProgressFn, base: Future | None
) -> None:
    if base is not None:
        base.result()
    recipe = recipes.recipe(name)
    started = time.monotonic()
    labels = (f"sshexec.lab.image={name}", f"sshexec.lab.tag={tags[name]}")
    if isinstance(recipe, Debootstrap):
        _build_debootstrap(name, recipe, tags[name], labels, build_dir, report)
    elif isinstance(recipe, Busybox):
        _build_busybox(name, recipe, tags[name], labels, build_dir, report)
    else:
        _build_dockerfile(name, recipe, tags[name], tags[recipe.base], labels, report)
    report(name, f"built {tags[name]} in {time.monotonic() - started:.1f}s")


# --- the three kinds of build ------------------------------------------------


def _build_debootstrap(
    name: str, recipe: Debootstrap, tag: str, labels: tuple[str, ...], build_dir: Path, report: ProgressFn
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
            _install(recipes.FILES_DIR / src, rootfs / dest, mode)
        if recipe.docker_client:
            _install(recipes.docker_client(), rootfs / "usr/bin/docker", 0o755)
        for argv in recipe.setup:
            _run(name, ["chroot", str(rootfs), *argv], env={"PATH": recipes.PATH.removeprefix("PATH="), "LC_ALL": "C"})
        report(name, f"docker import as {tag}")
        _import(name, rootfs, tag, recipe.changes, labels)


def _debootstrap_argv(recipe: Debootstrap, rootfs: Path, cache: Path) -> list[str]:
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
    name: str, recipe: Busybox, tag: str, labels: tuple[str, ...], build_dir: Path, report: ProgressFn
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
    name: str, recipe: Dockerfile, tag: str, base_tag: str, labels: tuple[str, ...], report: ProgressFn
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
        if not deb.is_file() or recipes.sha256_file(deb) != fields[3].removeprefix("SHA256:"):
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
