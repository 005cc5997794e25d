"""The `sshexec` console script: start fast, then hand over to the invoke program in sshexec.cli."""

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
