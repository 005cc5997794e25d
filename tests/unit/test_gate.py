"""gate.Gate: what sshd accepted at once is the limit it learns after a refusal, never a racy count."""

from __future__ import annotations

import threading

from sshexec.ssh._gate import Gate


def test_a_refusal_right_after_a_close_keeps_what_the_server_accepted():
    """Seen with MaxSessions 2: sshd still counts a channel we closed a moment ago."""
    g = Gate(8, what="an SSH channel")
    a, b = object(), object()
    for holder in (a, b):
        assert g.acquire(1)
        g.admitted(holder)
    g.release(a)  # closed here; the server has not seen it yet
    assert g.acquire(1)
    g.release()  # ... and refuses the next one
    g.refused()
    assert g.limit == 2  # not 1, which is all that was open here at that moment


def test_the_limit_rises_to_what_was_admitted_in_parallel_with_the_refused_one():
    g = Gate(8, what="a connection")
    for _ in range(3):
        assert g.acquire(1)
    g.release()
    g.refused()  # nothing confirmed yet: one at a time, for now
    assert g.limit == 1
    g.admitted(object())
    g.admitted(object())  # the two racing ones got in after all
    assert g.limit == 2 and g.peak == 2


def test_what_the_server_already_closed_does_not_count():
    """sshd frees a session once it has our CLOSE; our code may release it a moment later."""
    g = Gate(8, what="an SSH channel")
    closed = {"a": False}
    for name in ("a", "b"):
        assert g.acquire(1)
        g.admitted(name, closed=lambda name=name: closed.get(name, False))
    closed["a"] = True  # the server closed it; not released here yet
    assert g.acquire(1)
    g.admitted("c")
    assert g.peak == 2  # not 3: the server never held three at once


def test_callers_past_the_limit_wait_for_a_release():
    g = Gate(1, what="an SSH channel")
    assert g.acquire(1)
    assert not g.acquire(0.05)
    got = []
    waiter = threading.Thread(target=lambda: got.append(g.acquire(10)))
    waiter.start()
    g.release()
    waiter.join(10)
    assert got == [True] and g.held == 1


def test_a_lagging_server_gets_one_fewer_at_each_refusal():
    """sshd's MaxStartups count lags behind logins already done: it drops even at what it once accepted."""
    g = Gate(4, what="a connection")
    for _ in range(2):
        assert g.acquire(1)
        g.admitted(object())
    assert g.acquire(1)
    g.release()
    g.refused(lagging=True)
    assert g.limit == 2  # what it accepted at once
    g.refused(lagging=True)
    assert g.limit == 1
    g.refused(lagging=True)
    assert g.limit == 1  # never none
