import subprocess
import sys
import threading
import time

from sshexec.config.inventory import Worker
from sshexec.core.fanout import fan_out
from sshexec.errors import Cancelled
from sshexec.store.history import History, new_run_id


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


def test_history_records_runs_steps_and_artifacts(tmp_path):
    h = History(tmp_path)
    rid = new_run_id()
    h.start_run(rid, "rb", runbook_path="/rb.yaml", inventory="/inv.yaml", variables={"A": "1"})
    assert h.run(rid).status == "running"
    h.start_step(rid, 0, "s", "w1")
    h.finish_step(rid, "s", "w1", status="succeeded", exit_code=0, message=None, outputs={"X": "1"})
    h.add_artifact(rid, "s", "w1", "a.txt", tmp_path / "a.txt", 3)
    h.finish_run(rid, "succeeded", 0, None)
    rec = h.run(rid)
    assert (rec.status, rec.exit_code, rec.variables) == ("succeeded", 0, {"A": "1"})
    assert h.steps(rid)[0]["outputs"] == {"X": "1"}
    assert h.artifacts(rid)[0]["name"] == "a.txt"
    assert h.find(rid[:10]) == [rid]
    assert oct(h.path.stat().st_mode & 0o777) == "0o600"


def test_a_run_whose_process_died_shows_as_interrupted(tmp_path):
    code = "import sys; from pathlib import Path; from sshexec.store.history import History; h = History(Path(sys.argv[1])); h.start_run('r-dead', 'rb', runbook_path='', inventory='', variables={})"
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True)
    assert History(tmp_path).run("r-dead").status == "interrupted"


def test_two_processes_write_at_once(tmp_path):
    code = (
        "import sys; from pathlib import Path; from sshexec.store.history import History\n"
        "h = History(Path(sys.argv[1]))\n"
        "for i in range(50):\n"
        "    rid = f'{sys.argv[2]}-{i}'\n"
        "    h.start_run(rid, 'rb', runbook_path='', inventory='', variables={})\n"
        "    h.start_step(rid, 0, 's', 'w')\n"
        "    h.finish_step(rid, 's', 'w', status='succeeded', exit_code=0, message=None, outputs={})\n"
        "    h.finish_run(rid, 'succeeded', 0, None)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), tag]) for tag in ("a", "b")]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    runs = History(tmp_path).runs(1000)
    assert len(runs) == 100 and {r.status for r in runs} == {"succeeded"}
