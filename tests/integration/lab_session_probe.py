"""A pytest session of its own for test_test_lab.py; not collected by the suite (its name has no test_ prefix).

It brings up the lab named by SSHEXEC_TEST_LAB through the suite's own `lab`
fixture, writes what it saw to $SSHEXEC_PROBE_OUT, then fails or is
interrupted when asked to: the session's teardown must take the lab down all the same.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from labkit import lab_pids


def test_the_lab_is_up(lab):
    st = lab.status()
    assert [w.name for w in st.workers if w.role == "worker"] == ["w1", "w2", "w3"] and all(w.running for w in st.workers), st
    assert st.registry.startswith("up (pid ")
    pids = lab_pids(lab)
    Path(os.environ["SSHEXEC_PROBE_OUT"]).write_text(json.dumps({"containers": [w.container for w in st.workers], "pids": {str(p): c for p, c in pids.items()}}))


def test_then_this_one_fails_or_is_interrupted_when_asked():
    if os.environ.get("SSHEXEC_PROBE_INTERRUPT"):
        os.kill(os.getpid(), signal.SIGINT)  # a first Ctrl-C, where it always lands: in a test
    if os.environ.get("SSHEXEC_PROBE_FAIL"):
        pytest.fail("failing on purpose: the lab must be taken down all the same")
