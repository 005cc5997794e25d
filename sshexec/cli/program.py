"""The `sshexec` program: invoke's Program with sshexec's exit codes and error messages."""

from __future__ import annotations

import sys

from invoke import Exit, ParseError, Program

from .. import ui
from ..errors import SshexecError, exit_code_for


class SshexecProgram(Program):
    """invoke's Program with sshexec's exit codes and error messages."""

    def run(self, argv=None, exit=True):
        code = 0
        try:
            self.create_config()
            self.parse_core(argv)
            self.parse_collection()
            self.parse_tasks()
            self.parse_cleanup()
            self.update_config()
            self.execute()
        except ParseError as exc:
            print(f"sshexec: {exc}\n  → see: sshexec --help, or sshexec --help COMMAND", file=sys.stderr)
            code = 2
        except Exit as exc:
            if exc.message:
                print(exc.message, file=sys.stderr)
            code = exc.code
        except SshexecError as exc:
            ui.error(exc)
            code = exc.exit_code
        except KeyboardInterrupt:
            print("cancelled", file=sys.stderr)
            code = 130
        except Exception as exc:  # noqa: BLE001 - last resort: say what happened, exit 3
            ui.error(exc)
            code = exit_code_for(exc)
        if exit:
            sys.exit(code)
        return code
