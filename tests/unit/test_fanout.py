import threading
import time

from sshexec.config.inventory import Worker
from sshexec.core.fanout import fan_out
from sshexec.errors import Cancelled


def workers(n):
    return [Worker(f"w{i}", "h", 22, "u", None, __import__("pathlib").Path("/kh"), ("docker",), "~/.sshexec", 5.0) for i in range(n)]


def test_fan_out_bounds_concurrency_and_keeps_order():
    running, peak = [0], [0]
    lock = threading.Lock()

    def fn(w):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        if w.name == "w3":
            raise RuntimeError("boom")
        return w.name.upper()

    res = fan_out(workers(8), fn, parallel=3)
    assert list(res) == [f"w{i}" for i in range(8)]
    assert peak[0] <= 3
    assert isinstance(res["w3"], RuntimeError) and res["w0"] == "W0"


def test_fan_out_cancel_skips_waiting_calls_and_abandons_stuck_ones():
    cancel = threading.Event()
    release, finished = threading.Event(), threading.Event()
    calls = []

    def fn(w):
        calls.append(w.name)
        cancel.set()
        release.wait(60)  # stuck until the test lets go (bounded)
        finished.set()
        return "late"

    res = fan_out(workers(3), fn, parallel=1, cancel=cancel, grace=0.3)
    assert not finished.is_set()  # fan_out came back while the stuck call was still inside: abandoned
    release.set()
    assert calls == ["w0"]  # the waiting calls were never started
    assert all(isinstance(r, Cancelled) for r in res.values())


# The history's own tests run on SQLite and PostgreSQL: tests/integration/test_history.py.
