"""The real stack for integration tests: a lab of its own (dockerd, registry, SSH workers).

The test lab is named "sshexec-test" with its registry on 127.0.0.1:5101, so it
never disturbs the lab a developer brought up with `sshexec lab up`. Two checkouts
testing side by side set SSHEXEC_TEST_LAB and SSHEXEC_TEST_REGISTRY_PORT (and
SSHEXEC_TEST_LAB2_PORT) to keep their labs apart.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from labkit import leftovers, sshexec

REAL_STATE = Path(os.environ.get("SSHEXEC_HOME") or Path.home() / ".local/share/sshexec").expanduser()
TEST_LAB = os.environ.get("SSHEXEC_TEST_LAB", "sshexec-test")
TEST_REGISTRY_PORT = int(os.environ.get("SSHEXEC_TEST_REGISTRY_PORT", "5101"))


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def lab():
    from sshexec.lab.core import Lab

    home = REAL_STATE / TEST_LAB
    lab = Lab(TEST_LAB, home=home, inventory_dir=home / "inventory", registry_port=TEST_REGISTRY_PORT)
    lab.up(at_least=3)
    return lab


@pytest.fixture
def lab_env(lab, monkeypatch):
    """The environment a user of the test lab has: the feed password and the inventory."""
    for k, v in lab.env().items():
        monkeypatch.setenv(k, v)
    return lab


@pytest.fixture
def inventory(lab_env):
    from sshexec.inventory import load_inventory

    return load_inventory(lab_env.inventory_path)


@pytest.fixture
def cli(lab_env):
    return sshexec


@pytest.fixture
def no_leftovers(lab):
    """After the test: nothing of its runs is left on any worker."""
    from sshexec.history import History

    yield
    ids = [r.id for r in History().runs(1000)]
    assert leftovers(lab, ids) == []
