"""The `sshexec` console script: hand the command to the resident agent (sshexec/agent/), else start fast and run the invoke program in sshexec.cli.

`sshexec run|check|logs|runs` go to the agent unless SSHEXEC_AGENT=0: until
then only the standard library is imported. Everything else, and every command
when the agent is off or not up yet, runs in this process as before.
"""

import atexit
import gc
import sys


def _lazy_mock() -> None:
    """invoke imports unittest.mock (and with it asyncio: ~0.1 s) only for its MockContext.

    The sshexec program never uses MockContext, so until something really needs
    unittest.mock, a stand-in whose Mock imports the real module on first use
    takes its place. Only the console script does this, never the library.
    """
    if "unittest.mock" in sys.modules:
        return
    import types

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
        # The agent ran the command: this process only says its exit code. No interpreter teardown
        # (≈ 3 ms of a warm command): nothing here registered exit work, and what it wrote is flushed.
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (AttributeError, OSError, ValueError):
                pass
        import os

        os._exit(code & 0xFF if isinstance(code, int) else 1)
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
    """The agent's process (spawned by agent.client.start): serve until it ends; in each forked child, run
    its command, then, while each ends cleanly, the next ones it is handed, over the SSH connections it keeps."""
    from .agent import child, server

    handed = server.serve(warm=_warm, defer=defer)
    if handed is None:
        return
    conn, ctl = handed
    child.remember_forked()
    from .config._yaml import keep_parsed
    from .ssh import pool
    from .store.db import keep_open

    pool.enable()
    keep_parsed()
    keep_open()
    while conn is not None:
        hooks = atexit._ncallbacks()
        code: object = 1
        try:
            child.adopt(conn)
            from .cli import main as cli_main

            cli_main()
            code = 0
        except SystemExit as exc:
            code = exc.code
        except BaseException:
            child.exited(130)
            gc.freeze()
            raise
        child.exited(code)
        if not _reusable(hooks):
            gc.freeze()  # as in_process(): no collection of everything at the interpreter's end
            raise SystemExit(code)
        child.finish()
        try:
            wire_done(ctl)
        except OSError:
            raise SystemExit(0) from None  # the agent is gone: so is this child, after its command
        _between_commands(child.client_env())
        conn = child.wait_for_next(ctl, held=pool.held, tick=pool.sweep)
    pool.close_all()


def wire_done(ctl) -> None:
    from .agent import wire

    wire.send(ctl, wire.DONE, {})


def _reusable(hooks: int) -> bool:
    """This child may serve another command: it ended by itself, registered no exit work, and left no thread behind."""
    from .agent import child
    from .ssh import pool

    if not child.reusable() or atexit._ncallbacks() != hooks:
        return False
    import threading
    import time

    keep = {threading.main_thread(), *pool.transports(), *child.own_threads()}
    end = time.monotonic() + 0.3  # the client waits for its exit code meanwhile: a thread that lingers ends the child instead
    for t in threading.enumerate():
        if t not in keep:
            t.join(max(0.0, end - time.monotonic()))
            if t.is_alive():
                return False
    return True


def _between_commands(client_env: dict) -> None:
    """Forget the finished command: its consoles and options, the keys and ssh config it read, its
    environment; then wipe the secrets it read from this process's memory (agent/scrub.py)."""
    import os
    import time

    from .agent import child, scrub
    from .cli import common, ui
    from .config._yaml import forget_parsed_holding
    from .core.secrets import secret_env_names
    from .ssh import pool

    ui.forget_consoles()
    common.forget_options()
    pool.between_commands()
    names = secret_env_names(forget=True)
    child.reset()
    secrets = scrub.needles(names, client_env, dict(os.environ))
    del client_env
    forget_parsed_holding(secrets)
    t0 = time.monotonic()
    gc.collect()  # the command's objects (the agent's preloaded ones are frozen)
    t1 = time.monotonic()
    wiped = scrub.scrub(secrets)
    sys.stderr.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} sshexec-agent[{os.getpid()}] reset: gc {(t1 - t0) * 1000:.0f} ms, "
                     f"{wiped} copies of {len(secrets)} secret(s) wiped in {(time.monotonic() - t1) * 1000:.0f} ms\n")  # fmt: skip
    sys.stderr.flush()
