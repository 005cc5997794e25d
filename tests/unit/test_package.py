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
    loaded = imported_after("import sshexec.store.history")
    assert not {m for m in loaded if m.startswith("sshexec.lab")}


def test_history_and_lab_share_one_state_home(tmp_path, monkeypatch):
    from sshexec.core.local import state_home
    from sshexec.lab.core import Lab
    from sshexec.store.history import History

    monkeypatch.setenv("SSHEXEC_HOME", str(tmp_path))
    monkeypatch.delenv("SSHEXEC_LAB_HOME", raising=False)
    assert state_home() == tmp_path
    assert History().db.home == tmp_path
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
    "Problem",
    "WorkerError",
    "ConnectError",
    "UnreachableError",
    "AuthError",
    "HostKeyError",
    "UnknownHostKey",
    "ChangedHostKey",
    "RevokedHostKey",
    "HostCertificateError",
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
    "LockBusy",
    "NoFreeSlot",
    "DatabaseError",
    "AgentError",
    "StepTimeout",
    "Cancelled",
]
HEAVY = ("paramiko", "pydantic", "rich", "yaml", "fabric", "invoke")


def test_all_is_pinned():
    import sshexec

    assert sshexec.__all__ == PUBLIC


def test_every_public_name_resolves():
    import sshexec
    import sshexec.config.inventory
    import sshexec.config.runbook
    import sshexec.errors
    import sshexec.run.result
    import sshexec.run.runner

    for name in sshexec.__all__:
        assert getattr(sshexec, name) is not None, name
    assert sshexec.Runner is sshexec.run.runner.Runner and sshexec.RunResult is sshexec.run.result.RunResult
    assert sshexec.load_inventory is sshexec.config.inventory.load_inventory
    assert sshexec.load_runbook is sshexec.config.runbook.load_runbook
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
    assert {m for m in loaded if m.startswith("sshexec")} == {"sshexec"}, "even the errors come on first use (the agent's thin client imports the package)"


def test_the_program_starts_without_the_library():
    """What `sshexec --help` loads: invoke, but neither paramiko, pydantic nor rich."""
    loaded = imported_after("import sshexec._entry as e; e._lazy_mock(); import sshexec.cli")
    assert "invoke" in loaded
    assert not {m for m in loaded if m.split(".")[0] in ("paramiko", "pydantic", "rich", "fabric")}


CONSOLE_SCRIPT = "import sys\nsys.argv = ['sshexec', '--version']\nfrom sshexec._entry import main\ntry:\n    main()\nexcept SystemExit:\n    pass"


def test_the_console_script_loads_one_yaml():
    """invoke's vendored PyYAML is not imported next to the real one (entry._one_yaml)."""
    loaded = imported_after(CONSOLE_SCRIPT + "\nimport invoke.util, yaml\nassert invoke.util.yaml is yaml")
    assert "yaml" in loaded and "invoke" in loaded
    assert not {m for m in loaded if m.startswith("invoke.vendor.yaml.")}, "invoke's own copy of yaml was loaded"


def test_the_console_script_spares_the_collector_at_exit():
    """Every object left when the program ends is frozen: Python's teardown does not scan them again."""
    probe = CONSOLE_SCRIPT + "\nimport gc\nprint('frozen', gc.get_freeze_count())"
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=60, check=True)
    frozen = int(res.stdout.split("frozen", 1)[1])
    assert frozen > 10_000, res.stdout


def test_loading_runner_on_first_use():
    loaded = imported_after("from sshexec import Runner")
    assert "sshexec.run.runner" in loaded and "paramiko" in loaded


def import_graph() -> dict[str, set[str]]:
    """sshexec module -> the sshexec modules it imports, at the top or inside functions."""
    import ast

    root = REPO / "sshexec"
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = (path, parts[-1] == "__init__")
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        edges = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package if node.level else ""
                mod = ".".join(filter(None, [base, node.module or ""]))
                targets = [f"{mod}.{alias.name}" if f"{mod}.{alias.name}" in modules else mod for alias in node.names]
            else:
                continue
            edges.update(t for t in targets if t in modules and t != name)
    return graph


def test_no_import_cycle_even_inside_functions():
    graph = import_graph()
    assert graph["sshexec.cli.runs"] >= {"sshexec.cli.common", "sshexec.run.runner"}  # the graph sees function-level imports
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_command_modules_import_no_other_command_module():
    graph = import_graph()
    commands = {"sshexec.cli.workers", "sshexec.cli.runs", "sshexec.cli.data", "sshexec.cli.coord", "sshexec.cli.lab", "sshexec.cli.server"}
    allowed = {"sshexec.cli.lab": {"sshexec.cli.runs"}}  # demo runs its runbook the way `run` does
    for module in commands:
        assert graph[module] & commands <= allowed.get(module, set()), module
