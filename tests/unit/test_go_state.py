"""What the worker says back, parsed: GO's state lines, image facts, `check`'s report, pull progress.

The inputs are copied from real runs on the lab (worker w1, docker 20.10).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sshexec.config.inventory import Worker
from sshexec.errors import ImageRefused
from sshexec.ops.check import parse_check
from sshexec.worker.docker import ImageInfo, WorkerFacts, parse_state, preflight
from sshexec.worker.go import GoState
from sshexec.worker.pull import PullProgress

W = Worker("w1", "h", 22, "deploy", None, Path("/kh"), ("docker",), "~/.sshexec", 5.0)
ROOT = b"##sshexec-state root /var/lib/sx-b/work/w1 1000 1000 x86_64\n"
NOIMAGE = b"##sshexec-state noimage  Error: No such image: nope:1\n"
ENTRYPOINT = b'##sshexec-state image ["/bin/sh","-c"]\t["echo hi"]\t""\tlinux\tamd64\tsha256:868f9bab75ba1de17e08bdbbe84528e6f95da89751f6a947fb01499c0f50955f\n'
BUSYBOX = b'##sshexec-state image null\t["/bin/sh"]\t""\tlinux\tamd64\tsha256:7f2ce8d645b4017faf91eba0200015f2065aadc87006953c63e572e5eb60cc86\n'
NONROOT = 'null\t["/bin/bash"]\t"app"\tlinux\tamd64\tsha256:7fb19e082b745f6ab049a5d86e3002d22c23a0448ecc83a8ca05dd4231e94f32'


@pytest.mark.parametrize(
    "line, kind, fields",
    [
        ("root /var/lib/sx-b/work/w1 1000 1000 x86_64", "root", ["/var/lib/sx-b/work/w1", "1000", "1000", "x86_64"]),
        ("root /home/my user/sshexec work 1001 100 aarch64", "root", ["/home/my user/sshexec work", "1001", "100", "aarch64"]),
        ("image null\t[\"/bin/sh\"]\t\"\"\tlinux\tamd64\tsha256:7f", "image", ["null", '["/bin/sh"]', '""', "linux", "amd64", "sha256:7f"]),
        ("noimage  Error: No such image: nope:1", "noimage", [" Error: No such image: nope:1"]),
        ("executor-missing", "executor-missing", [""]),
        ("staged", "staged", [""]),
    ],
    ids=["root", "root-with-spaces", "image", "noimage", "executor-missing", "staged"],
)
def test_parse_state(line, kind, fields):
    assert parse_state(line) == (kind, fields)


@pytest.mark.parametrize(
    "fields, entrypoint, cmd, user",
    [
        (ENTRYPOINT.decode().split(" ", 2)[2].rstrip("\n").split("\t"), ("/bin/sh", "-c"), ("echo hi",), ""),
        (NONROOT.split("\t"), None, ("/bin/bash",), "app"),
        (["[]", "null", "null", "linux", "arm64", "sha256:1"], None, None, ""),
    ],
    ids=["entrypoint", "nonroot", "empty"],
)
def test_image_info(fields, entrypoint, cmd, user):
    info = ImageInfo.parse("img:1", fields)
    assert (info.entrypoint, info.cmd, info.user) == (entrypoint, cmd, user)
    assert info.os == "linux" and info.id.startswith("sha256:")


def test_preflight_refuses_entrypoints_and_foreign_platforms():
    ok = ImageInfo.parse("img:1", NONROOT.split("\t"))
    preflight(W, ok, "x86_64")
    with pytest.raises(ImageRefused, match=r'has ENTRYPOINT \["/bin/sh", "-c"\]'):
        preflight(W, ImageInfo.parse("ep:1", ENTRYPOINT.decode().split(" ", 2)[2].strip().split("\t")), "x86_64")
    with pytest.raises(ImageRefused, match="is for linux/amd64 but w1 is linux/arm64"):
        preflight(W, ok, "aarch64")
    with pytest.raises(ImageRefused, match="not linux"):
        preflight(W, ImageInfo("w:1", None, None, "", "windows", "amd64", "sha256:1"), "x86_64")


def gate():
    events, forwarded = [], []
    g = GoState("img:1", lambda: events.append("staged"), forwarded.append)
    return g, events, forwarded


@pytest.mark.parametrize("chunk", [1, 3, 17, 10_000])
def test_go_state_lines_until_staged_then_the_containers_stderr(chunk):
    g, events, forwarded = gate()
    data = ROOT + BUSYBOX + b"##sshexec-state staged\ncontainer says hi\n##sshexec-state root fake 0 0 x\n"
    for i in range(0, len(data), chunk):
        g.feed(data[i : i + chunk])
    assert g.root == WorkerFacts("/var/lib/sx-b/work/w1", "1000", "1000", "x86_64")
    assert g.info.cmd == ("/bin/sh",) and g.info.ref == "img:1"
    assert g.started and events == ["staged"]
    # After "staged", stderr is the container's: even a state line is just output.
    assert b"".join(forwarded) == b"container says hi\n##sshexec-state root fake 0 0 x\n"
    assert g.early == bytearray()


def test_go_state_before_a_refusal_keeps_the_facts_and_early_stderr():
    g, events, forwarded = gate()
    g.feed(ROOT + b"mkdir: cannot create directory\n" + NOIMAGE)
    assert not g.started and forwarded == [] and events == []
    assert g.facts == {"noimage": " Error: No such image: nope:1"}
    assert g.early == bytearray(b"mkdir: cannot create directory\n")
    g2, _, _ = gate()
    g2.feed(ROOT + b"##sshexec-state executor-missing\n")
    assert g2.facts == {"executor-missing": ""}


CHECK_OK = "work_root=/home/deploy/.sshexec\nwritable=1\nfree_kb=81994420\nmachine=x86_64\ncli=1\ndocker_rc=0\n--docker--\n20.10.24+dfsg1 linux amd64\n"
CHECK_DENIED = 'work_root=/home/nodocker/.sshexec\nwritable=1\nfree_kb=81994420\nmachine=x86_64\ncli=1\ndocker_rc=1\n--docker--\n\npermission denied while trying to connect to the Docker daemon socket at unix:///var/run/docker.sock: Get "http://%2Fvar%2Frun%2Fdocker.sock/v1.24/version": dial unix /var/run/docker.sock: connect: permission denied\n'
CHECK_NO_CLI = "work_root=/home/deploy/.sshexec\nwritable=1\nfree_kb=81994420\nmachine=x86_64\ncli=0\n"


@pytest.mark.parametrize(
    "output, facts",
    [
        (CHECK_OK, {"work_root": "/home/deploy/.sshexec", "writable": "1", "free_kb": "81994420", "machine": "x86_64", "cli": "1", "docker_rc": "0", "docker_out": "20.10.24+dfsg1 linux amd64"}),
        (CHECK_DENIED, {"cli": "1", "docker_rc": "1", "docker_out": CHECK_DENIED.split("--docker--\n")[1].strip()}),
        (CHECK_NO_CLI, {"cli": "0", "docker_out": ""}),
        ("work_root=/x=y\nnot a fact\n--docker--\nkey=value in docker output\n", {"work_root": "/x=y", "docker_out": "key=value in docker output"}),
    ],
    ids=["healthy", "socket-denied", "no-cli", "equals-signs"],
)
def test_parse_check(output, facts):
    got = parse_check(W, output)
    assert {k: got.get(k) for k in facts} == facts
    assert "key" not in got and "not a fact" not in got


PULL_OUTPUT = b"""capture2: Pulling from sshexec/fresh
1a52d9429274: Already exists
16c9a986176f: Pulling fs layer
8b988ea14c9c: Pulling fs layer
8b988ea14c9c: Download complete
16c9a986176f: Verifying Checksum
16c9a986176f: Download complete
16c9a986176f: Pull complete
8b988ea14c9c: Pull complete
Digest: sha256:0de1c7ad154e61504cf45abaad16aa8d94300369bde0fda35cec20cdbeee729a
Status: Downloaded newer image for 127.0.0.1:5121/sshexec/fresh:capture2
127.0.0.1:5121/sshexec/fresh:capture2
"""


def test_pull_progress_counts_layers_from_real_output():
    p = PullProgress()
    seen = []
    for line in PULL_OUTPUT.splitlines():
        p.feed(line)
        seen.append((len(p.done), len(p.layers)))
    assert p.layers == {b"1a52d9429274", b"16c9a986176f", b"8b988ea14c9c"}
    assert p.done == p.layers
    assert seen[1] == (1, 1) and seen[3] == (1, 3) and seen[7] == (2, 3) and seen[8] == (3, 3)
    assert p.status == "127.0.0.1:5121/sshexec/fresh:capture2"


def test_pull_progress_status_is_short_and_layer_lines_are_not_status():
    p = PullProgress()
    assert p.feed(b"16c9a986176f: Downloading [==>   ]  1.2MB/3MB") is True and p.status == ""
    assert p.feed(b"x" * 200) is False and len(p.status) == 80
    assert p.feed(b"   ") is False and len(p.status) == 80
