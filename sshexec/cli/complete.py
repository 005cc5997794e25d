"""Shell completion: the scripts `--print-completion-script SHELL` prints, and the candidates
`sshexec --complete -- WORDS... CURRENT` answers them with.

invoke's own completion offers every command again after a command (`sshexec lab
<TAB>` gave the command list), offers a positional argument as an option (`run
--runbook`), and its scripts call `sshexec` by name, which is not on PATH when the
program is `.venv/bin/sshexec`. Here the scripts call this very program by its
absolute path, pass the word under the cursor on its own (even when it is empty),
and the candidates follow the command line: a command's operands that have a fixed
set of values (`lab up|down|status|env`, `token create|list|revoke`) and an
option's values where they are known (`runs --status`); nothing where a file name
is wanted, so that the shell completes files.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

SHELLS = ("bash", "zsh", "fish")

_BASH = """\
# sshexec's completion for bash: eval "$({cmd} --print-completion-script bash)"
_complete_{name}() {{
    local IFS=$'\\n'
    COMPREPLY=( $(compgen -W "$({cmd} --complete -- "${{COMP_WORDS[@]:0:COMP_CWORD+1}}")" -- "${{COMP_WORDS[COMP_CWORD]}}") )
}}
complete -F _complete_{name} -o default {names}
"""

_ZSH = """\
# sshexec's completion for zsh: eval "$({cmd} --print-completion-script zsh)"
_complete_{name}() {{
    local -a candidates
    candidates=( ${{(f)"$({cmd} --complete -- "${{(@)words[1,CURRENT]}}")"}} )
    if (( ${{#candidates}} )); then
        compadd -- $candidates
    else
        _files
    fi
}}
(( $+functions[compdef] )) || {{ autoload -Uz compinit && compinit -u; }}
compdef _complete_{name} {names}
"""

_FISH = """\
# sshexec's completion for fish: {cmd} --print-completion-script fish | source
function __complete_{name}
    {cmd} --complete -- (commandline -opc) "$(commandline -ct)"
end
complete --command {name} --no-files --arguments '(__complete_{name})'
complete --path {path} --no-files --arguments '(__complete_{name})'
"""


def program_command() -> list[str]:
    """How a completion script calls this program: the console script beside this Python, else `python -m sshexec`."""
    script = Path(sys.executable).parent / "sshexec"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "sshexec"]


def script(shell: str, name: str = "sshexec") -> str:
    """The completion script for `shell`, registered for `name` and for the program's absolute path."""
    argv = program_command()
    cmd = shlex.join(argv)
    path = argv[0] if len(argv) == 1 else None
    names = " ".join(shlex.quote(n) for n in dict.fromkeys([name, *(p for p in [path] if p)]))
    template = {"bash": _BASH, "zsh": _ZSH, "fish": _FISH}[shell]
    if path is None:
        template = template.replace("complete --path {path} --no-files --arguments '(__complete_{name})'\n", "")
    return template.format(cmd=cmd, name=name, names=names, path=shlex.quote(path or ""))


def candidates(program, args: list[str]) -> list[str]:
    """What may come next: `args` is the command line up to the cursor, the program's name first
    and the word under the cursor last (empty when it is a new word)."""
    words, current = (args[1:-1], args[-1]) if len(args) > 1 else ([], "")
    collection = program.collection
    command = next((w for w in words if w in collection.task_names), None)
    previous = words[-1] if words else ""
    if command is None:
        if previous in ("--print-completion-script",):
            return list(SHELLS)
        if previous in ("-h", "--help") or not current.startswith("-"):
            return sorted(collection.task_names)
        return [f"--{a.name}" for a in program.core_args() if a.name != "complete"]  # --complete is for these scripts
    ctx = program.parser.contexts[command]
    positional = {a.name for a in ctx.positional_args}
    task = collection[command]
    values = getattr(task, "option_values", {})
    if previous.startswith("-") and previous in ctx.flags and ctx.flags[previous].takes_value:
        known = values.get(ctx.flags[previous].name, ())
        return list(known() if callable(known) else known)  # none known: the shell completes files
    if current.startswith("-"):
        return sorted({flag for flag, a in ctx.flags.items() if flag.startswith("--") and a.name not in positional} | {"--help"})
    given = _operands(words[words.index(command) + 1 :], ctx)
    names = [a.name for a in ctx.positional_args]
    if given < len(names):
        return list(values.get(names[given], ()))
    return []


def _operands(words: list[str], ctx) -> int:
    """How many of a command's operands are already on the line (options and their values skipped)."""
    n, skip = 0, False
    for w in words:
        if skip:
            skip = False
        elif w.startswith("-"):
            arg = ctx.flags.get(w.split("=", 1)[0])
            skip = bool(arg is not None and arg.takes_value and "=" not in w)
        else:
            n += 1
    return n


def option_values(**values):
    """Marks a task with the values of its operands and options, for completion: fixed ones, or
    a function that finds them when asked (the run ids --retry-failed may take)."""

    def mark(t):
        t.option_values = {k: v if callable(v) else tuple(v) for k, v in values.items()}
        return t

    return mark
