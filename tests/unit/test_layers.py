"""The layers of docs/architecture.md hold: import-linter's contracts (pyproject.toml) pass, and fail when broken."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from labkit import REPO

PACKAGE = REPO / "sshexec"
LINT = Path(sys.executable).with_name("lint-imports")


def lint(cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    return subprocess.run([str(LINT), "--no-cache", "--config", str(cwd / "pyproject.toml")], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_the_import_contracts_are_kept():
    res = lint(REPO, REPO)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Contracts: 3 kept, 0 broken." in res.stdout, res.stdout


def test_an_import_that_climbs_a_layer_breaks_the_contracts(tmp_path):
    """Proof that the check above can fail: a copy of the package with core/ importing cli/, and step/ importing ssh/."""
    shutil.copytree(PACKAGE, tmp_path / "sshexec", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    status = tmp_path / "sshexec/core/status.py"
    status.write_text(status.read_text() + "\n\ndef _climb():\n    from ..cli import ui  # noqa: F401\n")
    outcome = tmp_path / "sshexec/step/outcome.py"
    outcome.write_text(outcome.read_text() + "\n\ndef _around():\n    from ..ssh import Connection  # noqa: F401\n")
    res = lint(tmp_path, tmp_path)
    assert res.returncode != 0, res.stdout
    assert "each layer imports only the layers below it BROKEN" in res.stdout, res.stdout
    assert "sshexec.core.status -> sshexec.cli.ui" in res.stdout, res.stdout
    assert "a run and a step reach workers through worker/, never through ssh/ BROKEN" in res.stdout, res.stdout


def test_the_package_shows_its_layers():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 8, f"modules at the top of sshexec/: {top}; place new ones in a layer (docs/architecture.md)"
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}, f"modules over 400 lines: split them by idea: {long}"
