"""The bundle's hash a run records (issue 21): the same content gives the same hash, any change another, any file name."""

from __future__ import annotations

import os

from sshexec.worker.bundle import bundle_digest


def tree(root, names):
    root.mkdir()
    for name, data in names.items():
        (root / os.fsdecode(name)).write_bytes(data)
    return root


def test_same_content_same_hash_and_every_change_shows(tmp_path):
    files = {b"app.sh": b"echo hi\n", b"\xff\xfe not utf-8": b"x", b"new\nline": b""}
    a, b = tree(tmp_path / "a", files), tree(tmp_path / "b", files)
    os.utime(b / "app.sh", (0, 0))  # times are not content
    assert bundle_digest(b"s", a) == bundle_digest(b"s", b)
    assert len(bundle_digest(b"s", a)) == 64
    assert bundle_digest(b"s2", a) != bundle_digest(b"s", a)
    (b / "app.sh").write_bytes(b"echo ho\n")
    assert bundle_digest(b"s", a) != bundle_digest(b"s", b)
    (b / "app.sh").write_bytes(b"echo hi\n")
    (b / "app.sh").chmod(0o755)
    assert bundle_digest(b"s", a) != bundle_digest(b"s", b)
    assert bundle_digest(b"s", None) != bundle_digest(b"s", a)
