"""The `sshexec` console script: start fast, then hand over to the invoke program in sshexec.cli."""

from __future__ import annotations

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


def main() -> None:
    _lazy_mock()
    from .cli import main as cli_main

    cli_main()
