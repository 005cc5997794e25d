"""README blocks generated from the program itself, so they cannot rot.

`.venv/bin/python tests/readme_blocks.py --write` rewrites them in README.md;
tests/unit/test_cli.py checks that the README holds what the program prints now.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
HELP_BEGIN = "<!-- begin: output of `sshexec --help`, written by tests/readme_blocks.py --write -->"
HELP_END = "<!-- end: output of `sshexec --help` -->"


def help_text() -> str:
    """What `sshexec --help` prints (80 columns, as when its output is not a terminal)."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    res = subprocess.run([sys.executable, "-m", "sshexec", "--help"], capture_output=True, text=True, cwd=REPO, env=env, timeout=60, check=True)
    return res.stdout


def help_block() -> str:
    return f"{HELP_BEGIN}\n```console\n$ sshexec --help\n{help_text().rstrip()}\n```\n{HELP_END}"


def write(readme: Path = README) -> None:
    text = readme.read_text()
    start, end = text.index(HELP_BEGIN), text.index(HELP_END) + len(HELP_END)
    readme.write_text(text[:start] + help_block() + text[end:])


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write()
        print(f"rewrote the `sshexec --help` block in {README}")
    else:
        sys.stdout.write(help_block() + "\n")
