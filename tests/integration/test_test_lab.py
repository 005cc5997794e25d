"""`./scripts/test` takes its lab down at the end, and SSHEXEC_KEEP_TEST_LAB keeps it up.

Proved on pytest sessions of their own (lab_session_probe.py) against a lab of
their own, so the proof does not take down the lab this session runs on. After
them, `docker ps -a` holds no container of that lab and the process list no
process of it (labkit.lab_remnants: its containers, its recorded registry and
dockerd PIDs, anything naming its home or work directory). Every real session
checks the same after its own teardown (conftest.take_down) and fails loudly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from labkit import REPO, docker, free_port, lab_remnants

PROBE = Path(__file__).with_name("lab_session_probe.py")
KEEP = "SSHEXEC_KEEP_TEST_LAB"  # as in conftest.py
TEST_LAB = os.environ.get("SSHEXEC_TEST_LAB", "sshexec-test")


def probe_session(env: dict) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(PROBE)]
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def test_a_session_takes_its_lab_down_when_tests_fail_or_are_interrupted_unless_kept(tmp_path):
    from sshexec.lab.core import Lab

    name, port, home = f"{TEST_LAB}-probe", free_port(), tmp_path / "home"
    seen_file = tmp_path / "seen.json"
    env = {k: v for k, v in os.environ.items() if k != KEEP and not k.startswith("SSHEXEC_PROBE_")}
    env |= {
        "SSHEXEC_TEST_LAB": name, "SSHEXEC_TEST_REGISTRY_PORT": str(port), "SSHEXEC_HOME": str(home),
        "SSHEXEC_LAB_WORK": f"/var/lib/{TEST_LAB}/{name}-work", "SSHEXEC_PROBE_OUT": str(seen_file),
    }  # fmt: skip
    lab = Lab(name, home=home / name, inventory_dir=home / name / "inventory", registry_port=port, work_base=Path(env["SSHEXEC_LAB_WORK"]))
    try:
        # Kept: the session ends with its lab still up, and says how to take it down.
        kept = probe_session({**env, KEEP: "1"})
        assert kept.returncode == 0, kept.stdout[-3000:] + kept.stderr[-3000:]
        assert f"test lab {name} kept up" in kept.stdout and "lab down" in kept.stdout
        seen = json.loads(seen_file.read_text())
        pids = {int(p): c for p, c in seen["pids"].items()}
        # Three workers, the bastion and the worker behind it; the registry and a Docker daemon per worker.
        assert len(seen["containers"]) == 5 and len(pids) >= 5, seen
        running = docker("ps", "-q", "--filter", f"label=sshexec.lab={name}").stdout.split()
        assert len(running) == 5
        assert len(lab_remnants(lab, pids)) >= 5 + len(pids)  # the check sees a lab that is up: every container and process

        # A test fails: the lab is taken down all the same, and nothing of it is left.
        failed = probe_session({**env, "SSHEXEC_PROBE_FAIL": "1"})
        assert failed.returncode == 1, failed.stdout[-3000:] + failed.stderr[-3000:]
        assert "1 failed, 1 passed" in failed.stdout and " error" not in failed.stdout, failed.stdout[-3000:]
        assert f"test lab {name} taken down" in failed.stdout
        assert lab_remnants(lab, pids) == []
        assert docker("ps", "-aq", "--filter", f"label=sshexec.lab={name}").stdout.strip() == ""

        # A first Ctrl-C stops the tests, and the teardown still runs.
        interrupted = probe_session({**env, "SSHEXEC_PROBE_INTERRUPT": "1"})
        assert interrupted.returncode == 2, interrupted.stdout[-3000:] + interrupted.stderr[-3000:]
        assert "KeyboardInterrupt" in interrupted.stdout and f"test lab {name} taken down" in interrupted.stdout
        seen = json.loads(seen_file.read_text())
        again = {int(p): c for p, c in seen["pids"].items()}
        assert again.keys() != pids.keys()  # a new registry: the lab really came up again
        assert lab_remnants(lab, again) == []
    finally:
        lab.down()
    assert lab_remnants(lab, {}) == []
