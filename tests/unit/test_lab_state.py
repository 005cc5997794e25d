"""The lab remembers where `up` wrote its inventory, so that env, status and down work from any directory."""

from __future__ import annotations

import json

from sshexec.lab.core import Lab
from sshexec.lab.workerd import WorkerDaemon


def test_the_recorded_inventory_wins_over_the_current_directory(tmp_path, monkeypatch):
    home, elsewhere, recorded = tmp_path / "home", tmp_path / "elsewhere", tmp_path / "repo" / "inventory"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("SSHEXEC_LAB_INVENTORY_DIR", raising=False)
    assert Lab("sshexec-lab", home=home).inventory_dir == elsewhere / "inventory"  # nothing recorded: ./inventory
    home.mkdir()
    (home / "state.json").write_text(json.dumps({"inventory_dir": str(recorded)}))
    lab = Lab("sshexec-lab", home=home)
    assert lab.inventory_dir == recorded and lab.env()["SSHEXEC_INVENTORY"] == str(recorded / "lab.yaml")
    monkeypatch.setenv("SSHEXEC_LAB_INVENTORY_DIR", str(tmp_path / "asked"))
    assert Lab("sshexec-lab", home=home).inventory_dir == tmp_path / "asked"  # asked for: it wins


def test_lab_env_of_a_lab_that_is_not_up_says_so(tmp_path, monkeypatch):
    import subprocess
    import sys

    from labkit import REPO

    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SSHEXEC_HOME": str(tmp_path / "h"), "SSHEXEC_LAB_NAME": "nolab", "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-m", "sshexec", "lab", "env"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert (res.returncode, res.stdout) == (2, "")
    assert "the lab nolab is not up" in res.stderr and "sshexec lab up" in res.stderr


def test_each_worker_daemon_has_its_own_identity_and_name(tmp_path):
    from sshexec.lab.bridges import Bridge

    d = WorkerDaemon("lab", "w1", tmp_path)
    argv = d.argv(Bridge("br-x", "10.1.2.0/24"))
    assert argv[:6] == ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', "w1"] and argv[6] == "dockerd"
    assert argv[argv.index("--config-file") + 1] == str(tmp_path / "daemons" / "w1.json")
