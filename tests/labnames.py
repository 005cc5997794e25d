"""The test lab of each pytest-xdist worker (./scripts/test runs the suite with -n), and the files started first.

Each worker process of a parallel session brings up a test lab of its own, so a test never
shares its workers, their slots and locks, its registry or its counted containers with a
test running at the same time. Worker gw0 keeps the session's names (SSHEXEC_TEST_LAB,
SSHEXEC_TEST_REGISTRY_PORT, SSHEXEC_TEST_LAB2_PORT, or their defaults); worker gwN puts
"gwN-" before the lab's name and adds 1000*N to its two registry ports. Before, never after:
a lab's teardown counts the containers named "<its name>-..." as its own, so "sshexec-test-gw1"
was taken for what gw0's "sshexec-test" had left behind. Labs of several checkouts
stay apart as before: their base names and ports differ.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

DEFAULTS = {"SSHEXEC_TEST_LAB": "sshexec-test", "SSHEXEC_TEST_REGISTRY_PORT": "5101", "SSHEXEC_TEST_LAB2_PORT": "5102"}
APPLIED = "SSHEXEC_TEST_LAB_OF"  # the xdist worker whose lab the environment names already


def lab_of_worker(worker: str, env: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """The variables that name worker `worker`'s test lab (gw0: the session's own)."""
    n = int(worker.removeprefix("gw"))
    base = {k: env.get(k) or d for k, d in DEFAULTS.items()}
    if n == 0:
        return base
    return {
        "SSHEXEC_TEST_LAB": f"{worker}-{base['SSHEXEC_TEST_LAB']}",
        "SSHEXEC_TEST_REGISTRY_PORT": str(int(base["SSHEXEC_TEST_REGISTRY_PORT"]) + 1000 * n),
        "SSHEXEC_TEST_LAB2_PORT": str(int(base["SSHEXEC_TEST_LAB2_PORT"]) + 1000 * n),
    }


def name_this_workers_lab(env: MutableMapping[str, str] = os.environ) -> None:
    """In an xdist worker, point the SSHEXEC_TEST_* variables at its own lab, once.

    A pytest session started by a test (test_test_lab.py) inherits PYTEST_XDIST_WORKER and the
    variables already set: APPLIED says so, and they are left as they are.
    """
    worker = env.get("PYTEST_XDIST_WORKER", "")
    if not worker or env.get(APPLIED) == worker:
        return
    env.update(lab_of_worker(worker, env))
    env[APPLIED] = worker


# The longest test files, longest first (seconds each in one process, 2026-12-03): they start first, so
# that under pytest-xdist (--dist loadfile hands out whole files in this order) none of them starts last
# and holds the session alone. In one process the order of files changes nothing else.
LONGEST_FIRST = (
    "integration/test_cluster.py",  # 256 (185 alone since its shared cluster and database template)
    "integration/test_benchmarks_smoke.py",  # 104 (about 90 alone since --warmup 0; the cluster benchmark's part since apart)
    "integration/test_test_lab.py",  # 76 (119 under load)
    "integration/test_benchmarks_cluster_smoke.py",  # 57 under the suite's load (its own file since the evening of 2026-12-03)
    "integration/test_faults.py",  # 76
    "integration/test_operators.py",  # 68
    "integration/test_steps.py",  # 62
    "integration/test_sshd_limits.py",  # 57
    "integration/test_lab.py",  # 49
)


def longest_first(item) -> int:
    """The sort key of a test: its file's place in LONGEST_FIRST, the others after them."""
    path = item.nodeid.split("::", 1)[0]
    return next((i for i, tail in enumerate(LONGEST_FIRST) if path.endswith(tail)), len(LONGEST_FIRST))
