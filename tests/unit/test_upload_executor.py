"""The UPLOAD_EXECUTOR scriptlet, run by real shells on local directories: a lost race never nests.

`mv DIR EXISTING_DIR` moves DIR *into* EXISTING_DIR. Two uploads of the same
executor at once used to leave the loser's `.tmp.*` inside the winner's
directory. A `tar` wrapper makes the race happen every time: while "our"
upload extracts, the "winner" completes the executor directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from sshexec.executor import executor_files, executor_hash
from sshexec.worker.bundle import executor_tar
from sshexec.worker.docker import UPLOAD_EXECUTOR

SHELLS = [s for s in (["dash"], ["bash"], ["busybox", "sh"]) if shutil.which(s[0])]
FILES = sorted(executor_files())

WINNER_TAR = """#!/bin/sh
# Extract as asked, then play the concurrent upload that wins: it completes the executor.
"$REAL_TAR" "$@" || exit
for dir; do :; done
while [ $# -gt 0 ]; do [ "$1" = -C ] && dir=$2; shift; done
dest=${dir%/*}/${dir##*.}
mkdir -p "$dest" && cp "$dir"/* "$dest"/
"""


def upload(shell, root, *, path=None):
    argv = UPLOAD_EXECUTOR.argv(["docker"], str(root), executor_hash(), "w1")
    env = {"PATH": path or os.environ["PATH"], "REAL_TAR": shutil.which("tar"), "HOME": str(root)}
    return subprocess.run([*shell, *argv[1:]], input=executor_tar(), capture_output=True, env=env, timeout=30)


def listing(root):
    exe = root / "executor"
    return sorted(os.listdir(exe)), sorted(os.listdir(exe / executor_hash()))


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_a_fresh_upload(shell, tmp_path):
    p = upload(shell, tmp_path)
    assert p.returncode == 0, p.stderr
    assert listing(tmp_path) == ([executor_hash()], FILES)  # listed like `ls -A`: dot files count
    for name, data in executor_files().items():
        assert (tmp_path / "executor" / executor_hash() / name).read_bytes() == data


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_losing_the_race_leaves_nothing_inside_the_winner(shell, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "tar").write_text(WINNER_TAR)
    (bin_dir / "tar").chmod(0o755)
    root = tmp_path / "root"
    root.mkdir()
    p = upload(shell, root, path=f"{bin_dir}:{os.environ['PATH']}")
    assert p.returncode == 0, p.stderr
    assert listing(root) == ([executor_hash()], FILES)


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_an_executor_already_there_is_kept(shell, tmp_path):
    assert upload(shell, tmp_path).returncode == 0
    run_sh = tmp_path / "executor" / executor_hash() / "run.sh"
    before = run_sh.stat().st_ino
    assert upload(shell, tmp_path).returncode == 0
    assert run_sh.stat().st_ino == before and listing(tmp_path) == ([executor_hash()], FILES)


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_a_half_written_executor_is_completed(shell, tmp_path):
    """An upload killed midway left the directory without run.sh: the next one completes it."""
    exe = tmp_path / "executor" / executor_hash()
    exe.mkdir(parents=True)
    (exe / "helpers.sh").write_text("truncated")
    p = upload(shell, tmp_path)
    assert p.returncode == 0, p.stderr
    assert listing(tmp_path) == ([executor_hash()], FILES)
    assert (exe / "helpers.sh").read_bytes() == executor_files()["helpers.sh"]
