"""The package's shape: what `import sshexec` costs and offers, and which modules may import which."""

from __future__ import annotations

import json
import subprocess
import sys

from labkit import REPO


def imported_after(code: str) -> set[str]:
    """The modules loaded in a fresh interpreter after running `code`."""
    probe = f"{code}\nimport json, sys; print(json.dumps(sorted(sys.modules)))"
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=60, check=True)
    return set(json.loads(res.stdout.splitlines()[-1]))


def test_the_history_does_not_import_the_lab():
    loaded = imported_after("import sshexec.history")
    assert not {m for m in loaded if m.startswith("sshexec.lab")}


def test_history_and_lab_share_one_state_home(tmp_path, monkeypatch):
    from sshexec.history import History
    from sshexec.lab.core import Lab
    from sshexec.paths import state_home

    monkeypatch.setenv("SSHEXEC_HOME", str(tmp_path))
    monkeypatch.delenv("SSHEXEC_LAB_HOME", raising=False)
    assert state_home() == tmp_path
    assert History().home == tmp_path
    assert Lab("sx-paths-test").home == tmp_path / "sx-paths-test"
