"""Each pytest-xdist worker names a test lab of its own (tests/labnames.py)."""

from labnames import APPLIED, lab_of_worker, name_this_workers_lab

SESSION = {"SSHEXEC_TEST_LAB": "sshexec-t63", "SSHEXEC_TEST_REGISTRY_PORT": "5163", "SSHEXEC_TEST_LAB2_PORT": "5263"}


def test_gw0_keeps_the_sessions_lab_and_the_others_have_their_own():
    assert lab_of_worker("gw0", dict(SESSION)) == SESSION
    labs = [lab_of_worker(f"gw{i}", dict(SESSION)) for i in range(4)]
    assert labs[2] == {"SSHEXEC_TEST_LAB": "gw2-sshexec-t63", "SSHEXEC_TEST_REGISTRY_PORT": "7163", "SSHEXEC_TEST_LAB2_PORT": "7263"}
    names = {lab["SSHEXEC_TEST_LAB"] for lab in labs}
    ports = [lab[k] for lab in labs for k in ("SSHEXEC_TEST_REGISTRY_PORT", "SSHEXEC_TEST_LAB2_PORT")]
    assert len(names) == 4 and len(set(ports)) == len(ports) == 8


def test_the_defaults_when_the_session_names_none():
    assert lab_of_worker("gw1", {}) == {"SSHEXEC_TEST_LAB": "gw1-sshexec-test", "SSHEXEC_TEST_REGISTRY_PORT": "6101", "SSHEXEC_TEST_LAB2_PORT": "6102"}


def test_a_worker_renames_once_and_a_session_it_starts_keeps_what_it_was_given():
    env = {**SESSION, "PYTEST_XDIST_WORKER": "gw1"}
    name_this_workers_lab(env)
    assert env["SSHEXEC_TEST_LAB"] == "gw1-sshexec-t63" and env["SSHEXEC_TEST_REGISTRY_PORT"] == "6163" and env[APPLIED] == "gw1"
    name_this_workers_lab(env)  # the conftest read twice: no "gw1-gw1-"
    assert env["SSHEXEC_TEST_LAB"] == "gw1-sshexec-t63" and env["SSHEXEC_TEST_REGISTRY_PORT"] == "6163"
    child = {**env, "SSHEXEC_TEST_LAB": "gw1-sshexec-t63-probe", "SSHEXEC_TEST_REGISTRY_PORT": "40000"}  # test_test_lab.py's session
    name_this_workers_lab(child)
    assert child["SSHEXEC_TEST_LAB"] == "gw1-sshexec-t63-probe" and child["SSHEXEC_TEST_REGISTRY_PORT"] == "40000"


def test_outside_xdist_nothing_changes():
    env = dict(SESSION)
    name_this_workers_lab(env)
    assert env == SESSION


def test_the_longest_files_exist_and_start_first():
    from pathlib import Path
    from types import SimpleNamespace

    from labnames import LONGEST_FIRST, longest_first

    tests = Path(__file__).resolve().parents[1]
    assert [tail for tail in LONGEST_FIRST if not (tests / tail).is_file()] == []  # a renamed file is named here again
    ids = ["tests/unit/test_ui.py::t", "tests/integration/test_lab.py::t", "tests/integration/test_cluster.py::t[a]", "tests/integration/test_agent.py::t"]
    items = sorted((SimpleNamespace(nodeid=i) for i in ids), key=longest_first)
    assert [i.nodeid for i in items] == [ids[2], ids[1], ids[0], ids[3]]
