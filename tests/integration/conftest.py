"""The real stack for integration tests: a lab of its own (dockerd, registry, SSH workers).

The test lab is named "sshexec-test" with its registry on 127.0.0.1:5101, so it
never disturbs the lab a developer brought up with `sshexec lab up`. Two checkouts
testing side by side set SSHEXEC_TEST_LAB and SSHEXEC_TEST_REGISTRY_PORT (and
SSHEXEC_TEST_LAB2_PORT) to keep their labs apart.

The session takes its lab down at the end, whether tests passed or failed (or a
first Ctrl-C stopped them; a second one stops the teardown too), and then fails
loudly if a container or process of the lab is left. SSHEXEC_KEEP_TEST_LAB=1
keeps the lab up instead, for quick reruns while developing.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from labkit import lab_pids, lab_remnants, leftovers, sshexec
from labnames import lab_of_worker

REAL_STATE = Path(os.environ.get("SSHEXEC_HOME") or Path.home() / ".local/share/sshexec").expanduser()
TEST_LAB = os.environ.get("SSHEXEC_TEST_LAB", "sshexec-test")
TEST_REGISTRY_PORT = int(os.environ.get("SSHEXEC_TEST_REGISTRY_PORT", "5101"))
KEEP = "SSHEXEC_KEEP_TEST_LAB"
_ended: list[str] = []  # what the session did with its lab, for the terminal summary


def keep_lab() -> bool:
    return os.environ.get(KEEP, "").strip().lower() not in ("", "0", "no", "false")


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def lab(request):
    from sshexec.lab.core import Lab

    home = REAL_STATE / TEST_LAB
    lab = Lab(TEST_LAB, home=home, inventory_dir=home / "inventory", registry_port=TEST_REGISTRY_PORT)
    if keep_lab():
        _ended.append(f"test lab {lab.name} kept up ({KEEP} is set); take it down with: {down_command(lab)}")
    else:
        # Registered before up(): a lab that failed half-way up is taken down too.
        request.addfinalizer(lambda: take_down(lab))
    lab.up(at_least=3)
    return lab


def take_down(lab) -> None:
    """lab.down(), then fail loudly (an error at teardown) if any container or process of the lab is left.

    A KeyboardInterrupt (a second Ctrl-C) is not caught: it stops the teardown.
    """
    pids = lab_pids(lab)
    lab.down()
    left = lab_remnants(lab, pids)
    if left:
        _ended.append(f"test lab {lab.name}: left behind after `lab down`: {left}")
        pytest.fail(f"the test lab {lab.name} is not gone after lab.down(): " + "; ".join(left), pytrace=False)
    _ended.append(f"test lab {lab.name} taken down: no container or process of it is left (set {KEEP}=1 to keep it up)")


def down_command(lab) -> str:
    return (
        f"SSHEXEC_LAB_NAME={lab.name} SSHEXEC_LAB_HOME={lab.home} SSHEXEC_LAB_INVENTORY_DIR={lab.inventory_dir} "
        f"SSHEXEC_LAB_REGISTRY_PORT={lab.registry_port} .venv/bin/sshexec lab down"
    )


def pytest_terminal_summary(terminalreporter, config):
    for line in _ended:
        terminalreporter.write_line(line)
    # Under pytest-xdist the workers' own lines stay in the workers: the session names the labs it kept.
    workers = getattr(config.option, "numprocesses", None)
    if workers and not hasattr(config, "workerinput") and keep_lab():
        for i in range(int(workers)):
            ident = lab_of_worker(f"gw{i}")
            name = ident["SSHEXEC_TEST_LAB"]
            kept = SimpleNamespace(name=name, home=REAL_STATE / name, inventory_dir=REAL_STATE / name / "inventory", registry_port=ident["SSHEXEC_TEST_REGISTRY_PORT"])
            terminalreporter.write_line(f"test lab {name} of worker gw{i} kept up if it came up ({KEEP} is set); take it down with: {down_command(kept)}")


@pytest.fixture
def lab_env(lab, monkeypatch):
    """The environment a user of the test lab has: the feed password and the inventory."""
    for k, v in lab.env().items():
        monkeypatch.setenv(k, v)
    return lab


@pytest.fixture
def inventory(lab_env):
    from sshexec.config.inventory import load_inventory

    return load_inventory(lab_env.inventory_path)


@pytest.fixture
def cli(lab_env):
    return sshexec


@pytest.fixture
def no_leftovers(lab):
    """After the test: nothing of its runs is left on any worker."""
    from sshexec.store.history import History

    yield
    ids = [r.id for r in History().runs(1000)]
    assert leftovers(lab, ids) == []
