"""The `sshexec` program: invoke's Program with sshexec's own options, help, errors and exit codes.

invoke's core flags (--echo, --pty, --dry, --config, --command-timeout, ...)
configure *local shell commands*, which sshexec's tasks never run: the program
replaces them with its own few (`core_args`), and every step of invoke's
`run()` that read them is overridden here. `inv` itself (tasks.py) is untouched.
"""

from __future__ import annotations

import os
import re
import sys

from invoke import Argument, Exit, ParseError, Parser, ParserContext, Program

from ..errors import SshexecError, exit_code_for
from . import ui

SUMMARY = "Run deployment steps in Docker execution containers on agentless SSH workers."
EXIT_CODES = "Exit codes: 0 ok, 1 a script failed, 2 bad input, 3 infrastructure, 124 timeout, 130 cancelled."
HELP_FLAGS = ("--help", "-h")

# How each option is shown in `sshexec --help`; an option missing here is not shown.
# (`--complete` is what the completion script calls: not for people.)
_SHOWN = {
    "help": "-h, --help [COMMAND]",
    "version": "-V, --version",
    "list": "-l, --list",
    "print-completion-script": "--print-completion-script SHELL",
}


class SshexecProgram(Program):
    """`sshexec`: its commands are the tasks of a bundled namespace (sshexec.cli.ns)."""

    def core_args(self) -> list[Argument]:
        # Fresh objects on every call: invoke keeps parse results in them.
        return [
            Argument(names=("help", "h"), optional=True, help="show the commands, or explain COMMAND"),
            Argument(names=("version", "V"), kind=bool, default=False, help="print sshexec's version"),
            Argument(names=("list", "l"), kind=bool, default=False, help="list the commands"),
            Argument(names=("print-completion-script",), default="", help="print the completion script for bash, zsh or fish"),
            Argument(names=("complete",), kind=bool, default=False, help="print completion candidates for the words after --"),
        ]

    # -- the steps of Program.run that read core flags ------------------------------

    def create_config(self) -> None:
        # lazy: no invoke.yaml files are read; sshexec has nothing to configure there.
        self.config = self.config_class(lazy=True)

    def parse_core(self, argv) -> None:
        self.normalize_argv(argv)
        self.parse_core_args()
        if self.args.version.value:
            self.print_version()
            raise Exit
        shell = self.args["print-completion-script"].value
        if shell:
            from .complete import SHELLS, script

            if shell not in SHELLS:
                raise ParseError(f"no completion for the shell {shell!r}: choose {', '.join(SHELLS)}")
            print(script(shell, self.binary_names[0]), end="")
            raise Exit

    def parse_tasks(self) -> None:
        # --help is eager, wherever it stands: `sshexec run --help` explains run,
        # even though run's RUNBOOK is missing (invoke would take --help as the RUNBOOK).
        tokens = self.core.unparsed
        if any(t in HELP_FLAGS for t in tokens):
            before = tokens[: min(tokens.index(t) for t in HELP_FLAGS if t in tokens)]
            named = [t for t in before if t in self.collection.task_names]
            self.args.help.value = named[-1] if named else True
            self.parser = self._make_parser()
            self.tasks = []
            return
        self._named = set(tokens)  # see _make_parser
        try:
            try:
                super().parse_tasks()
            except ParseError as exc:
                context = getattr(exc, "context", None)
                missing = context.missing_positional_args if context and "required positional" in str(exc) else []
                if not missing or not all(arg.name in self._optional_operands(context.name, context) for arg in missing):
                    raise
                # invoke has no optional positional arguments: the task gets "" for one left out.
                # A missing positional eats whatever follows, so its context is the last one.
                self.core.unparsed = [*self.core.unparsed, *[""] * len(missing)]
                super().parse_tasks()
        except ValueError as exc:  # a value invoke could not convert, e.g. --parallel x
            raise ParseError(_bad_value(str(exc), self.argv)) from None
        finally:
            self._named = None
        for ctx in self.tasks:
            for arg in ctx.positional_args:
                if isinstance(arg.value, str) and arg.value.startswith("-"):
                    # invoke fills a missing RUNBOOK with whatever comes next: a typo'd option is not a file name.
                    raise ParseError(f"No idea what {arg.value!r} is!", ctx)

    _named: set[str] | None = None

    def _make_parser(self) -> Parser:
        # invoke's parser holds every command and deep-copies them all on each parse (≈ 4 ms of a warm
        # command through the agent). While the command line is parsed, only the commands its words name
        # are given: a command no word names cannot match one, so the outcome is the same.
        names = self.collection.task_names
        if self._named is not None:
            names = {p: a for p, a in names.items() if p in self._named or self._named.intersection(a)}
        contexts = [ParserContext(name=primary, aliases=aliases, args=self._arguments(primary)) for primary, aliases in names.items()]
        return Parser(initial=self.initial_context, contexts=contexts)

    def _arguments(self, name: str) -> list[Argument]:
        """A command's options, made once per process: invoke's Task.get_arguments hands out each option's
        help only once (it pops it), so a second parse in one process (an agent's child serving its next
        command) would show `--help` without it. The parser deep-copies them before it sets any value."""
        cache = self.__dict__.setdefault("_args", {})
        if name not in cache:
            cache[name] = self.collection[name].get_arguments(ignore_unknown_help=self.config.tasks.ignore_unknown_help)
        return cache[name]

    def parse_cleanup(self) -> None:
        wanted = self.args.help.value
        if wanted is True:
            self.print_help()
            raise Exit
        if wanted:
            self.parser = self._make_parser()  # every command: the one to explain may be any (`--help check`)
            if wanted not in self.parser.contexts:
                raise ParseError(f"No idea what {wanted!r} is!")
            self.print_task_help(wanted)
            raise Exit
        if self.args.list.value:
            self.list_tasks()
            raise Exit
        if self.args.complete.value:
            from .complete import candidates

            self.parser = self._make_parser()
            words = self.argv[self.argv.index("--") + 1 :] if "--" in self.argv else []
            for word in candidates(self, words):
                print(word)
            raise Exit
        if not self.tasks:
            self.print_help()
            raise Exit

    def update_config(self, merge: bool = True) -> None:
        if merge:
            self.config.merge()

    # -- what it prints ---------------------------------------------------------------

    def print_help(self) -> None:
        from .helptext import columns, wrap

        print(f"Usage: {self.binary} COMMAND [OPTIONS]")
        print(f"       {self.binary} --help COMMAND")
        print("")
        print("\n".join(wrap(SUMMARY, self.leading_indent)))
        print("")
        print("Commands:")
        print("")
        print("\n".join(columns(self._make_pairs(self.collection))))
        print("")
        print("Options:")
        print("")
        args = {arg.name: arg for arg in self.core_args()}
        print("\n".join(columns([(shown, args[name].help) for name, shown in _SHOWN.items()])))
        print("")
        print("\n".join(wrap(EXIT_CODES)))

    def print_task_help(self, name: str) -> None:
        from .helptext import task_help

        print(task_help(self.binary, name, self.collection[name], self.parser.contexts[name], self._optional_operands(name)), end="")

    def _optional_operands(self, name: str | None, context=None) -> tuple[str, ...]:
        """The positional arguments of task `name` that may be left out (common.optional_operands), and,
        on a parsed command line (`context`), those whose option was given (common.operand_unless)."""
        try:
            task = self.collection[name]
        except (KeyError, ValueError, TypeError):
            return ()
        given = ()
        if context is not None:
            given = tuple(operand for operand, option in getattr(task, "operand_unless", {}).items()
                          if option in context.args and context.args[option].got_value)  # fmt: skip
        return tuple(getattr(task, "optional_operands", ())) + given

    def task_list_opener(self, extra: str = "") -> str:
        return "Commands"

    # -- errors and exit codes ----------------------------------------------------------

    def run(self, argv=None, exit=True):
        from .common import forget_options

        forget_options()  # what an earlier run in this process was given (the tests run several)
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
            said = f"{self.binary}: {describe_parse_error(exc, getattr(self, 'argv', []))}"
            if ui.err_wraps():
                ui.line(ui.safe(said), hang=2, err=True)
            else:
                print(said, file=sys.stderr)  # whole, and without loading rich
            code = 2
        except Exit as exc:
            if exc.message:
                print(exc.message, file=sys.stderr)
            code = exc.code
        except SshexecError as exc:
            from .common import repeat_options

            exc.hint = repeat_options(exc.hint)  # a command it quotes acts on the same inventory
            ui.error(exc)
            code = exc.exit_code
        except KeyboardInterrupt:
            print("cancelled", file=sys.stderr)
            code = 130
        except BrokenPipeError:
            # `sshexec runs | head`: the reader left. Say nothing, and keep Python's
            # final flush of stdout from failing again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            code = 141
        except Exception as exc:  # noqa: BLE001 - last resort: say what happened, exit 3
            ui.error(exc)
            code = exit_code_for(exc)
        if exit:
            sys.exit(code)
        return code


def describe_parse_error(exc: ParseError, argv: list[str]) -> str:
    """One line for a command line invoke could not parse: what is wrong, and where help is."""
    context = getattr(exc, "context", None)
    command = context.name if context is not None and context.name else None
    text = str(exc)
    if m := re.fullmatch(r"No idea what '(.*)' is!", text):
        token = _as_typed(m[1], argv)
        if token.startswith("-"):
            what = f"unknown option {token}" + (f" for {command}" if command else "")
        elif command:
            what = f"unexpected argument {token!r} after {command}"
        else:
            what = f"unknown command {token!r}"
    elif m := re.fullmatch(r"'(.*)' did not receive required positional arguments: (.*)", text):
        names = [name.strip("' ").upper().replace("-", "_") for name in m[2].split(",")]
        subject = m[1]
        what = f"{subject} needs {' and '.join(names)}"
        command = m[1]
    elif m := re.match(r"Flag <Argument: ([\w-]+).*> (needed value|doesn't take any value)", text):
        flag = "--" + m[1].replace("_", "-")
        what = f"option {flag} needs a value" if m[2] == "needed value" else f"option {flag} takes no value"
        if (command, flag, m[2]) == ("run", "--retry-failed", "needed value"):
            what = "run --retry-failed needs RUN_ID (see sshexec runs)"
    else:
        what = text.rstrip("!.")
    return f"{what}; see: sshexec --help" + (f" {command}" if command else "")


def _as_typed(token: str, argv: list[str]) -> str:
    """invoke splits `-oX=Y` and complains about `Y`: name what the person typed instead."""
    for typed in argv:
        if typed.startswith("-") and typed.endswith("=" + token):
            return typed
    return token


def _bad_value(message: str, argv: list[str]) -> str:
    m = re.search(r"'(.*)'$", message)
    value = m[1] if m else ""
    for i, typed in enumerate(argv):
        if typed.startswith("-") and "=" in typed and typed.partition("=")[2] == value:
            return f"option {typed.partition('=')[0]} wants a whole number, not {value!r}"
        if typed == value and i > 0 and argv[i - 1].startswith("-"):
            return f"option {argv[i - 1]} wants a whole number, not {value!r}"
    return f"a whole number was expected, not {value!r}"
