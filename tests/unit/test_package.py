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


# Pinned, like httpx's test of its __all__: adding to the public API is a decision.
PUBLIC = [
    "__version__",
    "Runner",
    "RunResult",
    "load_inventory",
    "load_runbook",
    "SshexecError",
    "InputError",
    "WorkerError",
    "ConnectError",
    "UnreachableError",
    "AuthError",
    "HostKeyError",
    "UnknownHostKey",
    "ChangedHostKey",
    "ConnectionLost",
    "RemoteTimeout",
    "DockerError",
    "DockerMissing",
    "DaemonDown",
    "DockerPermission",
    "LoginError",
    "PullError",
    "ImageRefused",
    "DiskFull",
    "StepTimeout",
    "Cancelled",
]
HEAVY = ("paramiko", "pydantic", "rich", "yaml", "fabric", "invoke")


def test_all_is_pinned():
    import sshexec

    assert sshexec.__all__ == PUBLIC


def test_every_public_name_resolves():
    import sshexec
    import sshexec.errors
    import sshexec.inventory
    import sshexec.run
    import sshexec.runbook

    for name in sshexec.__all__:
        assert getattr(sshexec, name) is not None, name
    assert sshexec.Runner is sshexec.run.Runner and sshexec.RunResult is sshexec.run.RunResult
    assert sshexec.load_inventory is sshexec.inventory.load_inventory
    assert sshexec.load_runbook is sshexec.runbook.load_runbook
    assert set(dir(sshexec)) >= set(PUBLIC)
    assert "from sshexec import Runner" in sshexec.__doc__


def test_every_error_class_is_public():
    import sshexec
    import sshexec.errors

    classes = {n for n, v in vars(sshexec.errors).items() if isinstance(v, type) and issubclass(v, BaseException) and v.__module__ == "sshexec.errors"}
    assert classes <= set(sshexec.__all__), f"add to sshexec.__all__ (and PUBLIC here): {sorted(classes - set(sshexec.__all__))}"
    for name in classes:
        assert getattr(sshexec, name) is getattr(sshexec.errors, name)


def test_an_unknown_name_is_an_attribute_error():
    import pytest

    import sshexec

    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        sshexec.Nope  # noqa: B018


def test_import_sshexec_is_cheap():
    loaded = imported_after("import sshexec")
    assert not {m for m in loaded if m.split(".")[0] in HEAVY}, "import sshexec must not load the library's dependencies"
    assert {m for m in loaded if m.startswith("sshexec")} == {"sshexec", "sshexec.errors"}


def test_the_program_starts_without_the_library():
    """What `sshexec --help` loads: invoke, but neither paramiko, pydantic nor rich."""
    loaded = imported_after("import sshexec.entry as e; e._lazy_mock(); import sshexec.cli")
    assert "invoke" in loaded
    assert not {m for m in loaded if m.split(".")[0] in ("paramiko", "pydantic", "rich", "fabric")}


def test_loading_runner_on_first_use():
    loaded = imported_after("from sshexec import Runner")
    assert "sshexec.run" in loaded and "paramiko" in loaded
