"""The `sshexec` console script: hand the command to the resident agent (sshexec/agent/), else start fast and run the invoke program in sshexec.cli.

`sshexec run|check|logs|runs` go to the agent unless SSHEXEC_AGENT=0: until
then only the standard library is imported. Everything else, and every command
when the agent is off or not up yet, runs in this process as before.
"""

from __future__ import annotations

import gc
import sys
import types


def _lazy_mock() -> None:
    """invoke imports unittest.mock (and with it asyncio: ~0.1 s) only for its MockContext.

    The sshexec program never uses MockContext, so until something really needs
    unittest.mock, a stand-in whose Mock imports the real module on first use
    takes its place. Only the console script does this, never the library.
    """
    if "unittest.mock" in sys.modules:
        return
    stub = types.ModuleType("unittest.mock")

    def _real():
        del sys.modules["unittest.mock"]
        import unittest.mock as real

        return real

    class Mock:  # noqa: D401 - a stand-in
        def __new__(cls, *args, **kwargs):
            return _real().Mock(*args, **kwargs)

    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)  # the import system probes __path__ & co.
        return getattr(_real(), name)

    stub.Mock = Mock
    stub.__getattr__ = __getattr__  # type: ignore[attr-defined]
    sys.modules["unittest.mock"] = stub


def _one_yaml() -> None:
    """invoke imports its vendored copy of PyYAML 5.4 (~20 ms); sshexec needs PyYAML itself anyway.

    invoke falls back to the installed `yaml` when it has no vendored one
    (invoke/util.py), and it only calls `yaml.safe_load` on config files, which
    the sshexec program never reads (create_config is lazy). So the console
    script hands invoke the PyYAML that sshexec imports regardless.
    """
    if "invoke.vendor.yaml" not in sys.modules:
        import yaml

        sys.modules["invoke.vendor.yaml"] = yaml


def main() -> None:
    from .agent.client import delegate

    code = delegate(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    in_process()


def in_process() -> None:
    _lazy_mock()
    _one_yaml()
    from .cli import main as cli_main

    try:
        cli_main()
    finally:
        # The process ends here (cli_main exits). Python's teardown then runs the cyclic
        # garbage collector over every object the imports made (pydantic, paramiko, rich:
        # ~60 ms of a one-step run). Frozen objects are skipped; atexit handlers, thread
        # joins and the flush of stdout and stderr still happen as usual.
        gc.freeze()


# Imported by the agent before it listens, so that a command forked from it imports next to nothing:
# the program, and what run, check, logs and runs import on first use.
_PRELOAD = (
    "sshexec.cli", "sshexec.cli.ui", "sshexec.run.runner", "sshexec.ops.check", "sshexec.store.history", "sshexec.store.logtail",
    "sshexec.config.inventory", "sshexec.config.runbook", "sshexec.ssh.connection", "rich.console", "rich.table", "rich.text",
    "rich.progress", "sqlalchemy.dialects.sqlite", "sqlalchemy.dialects.sqlite.pysqlite", "sqlite3", "encodings.idna", "unicodedata",
    "sshexec.ssh._sshconfig",
)  # fmt: skip


def _warm() -> None:
    import importlib

    _lazy_mock()
    _one_yaml()
    for name in _PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError as exc:  # a preload is only a head start: the child imports what it needs anyway
            sys.stderr.write(f"preload {name}: {exc}\n")


def agent_main(defer: bool = False) -> None:
    """The agent's process (spawned by agent.client.start): serve until it ends; in each forked child, run its command."""
    from .agent import child, server

    conn = server.serve(warm=_warm, defer=defer)
    if conn is None:
        return
    code: object = 1
    try:
        child.adopt(conn)
        from .cli import main as cli_main

        cli_main()
    except SystemExit as exc:
        code = exc.code
        raise
    except KeyboardInterrupt:
        code = 130
        raise
    finally:
        child.exited(code)
        gc.freeze()
