"""What the terminal shows (sshexec/cli/ui.py): text from workers stays as written; rich loads off the run's path."""

from __future__ import annotations

import subprocess
import sys

from labkit import REPO

from sshexec.cli import ui


def test_emoji_codes_in_a_worker_s_text_stay_as_written(capsys):
    ui.info("step said :warning: and :thumbs_up:")
    ui.warn("w1: :x:")
    err = capsys.readouterr().err
    assert "step said :warning: and :thumbs_up:" in err
    assert "w1: :x:" in err
    assert "\u26a0" not in err and "\U0001f44d" not in err and "\u274c" not in err


def test_the_summary_console_shows_emoji_codes_as_written(capsys):
    ui.console().print(ui.safe("output: :smile:"))
    assert capsys.readouterr().out == "output: :smile:\n"


def test_preload_imports_rich_in_a_thread_of_its_own():
    probe = (
        "import sys, threading\n"
        "from sshexec.cli import ui\n"
        "t = ui.preload()\n"
        "assert t is not threading.current_thread() and t.daemon\n"
        "t.join(30)\n"
        "assert not t.is_alive()\n"
        "print(sorted(m for m in ('rich.console', 'rich.table', 'rich._emoji_codes') if m in sys.modules))\n"
        "print(ui._console is not None and ui._err_console is not None)\n"
    )
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=60, check=True)
    assert res.stdout.splitlines() == ["['rich.console', 'rich.table']", "True"]
