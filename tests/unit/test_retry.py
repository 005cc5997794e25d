"""retry.retry and retry.delays with a fake sleep: attempts, backoff, jitter, the filter, cancellation."""

from __future__ import annotations

import threading

import pytest

from sshexec.core.retry import delays, retry
from sshexec.errors import Cancelled


class Flaky:
    """Fails with each exception of `errors` in turn, then returns "ok"."""

    def __init__(self, *errors):
        self.errors = list(errors)
        self.calls = 0

    def __call__(self):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


class Clock:
    """A fake sleep that only adds up the time it was asked to wait."""

    def __init__(self):
        self.waits = []

    def __call__(self, seconds):
        self.waits.append(seconds)

    @property
    def now(self):
        return sum(self.waits)


@pytest.mark.parametrize(
    "args, expected",
    [
        ((1, 1.0), []),
        ((3, 1.0), [1.0, 2.0]),
        ((5, 0.5, 2.0, 3.0), [0.5, 1.0, 2.0, 3.0]),
        ((4, 0.1, 1.0), [0.1, 0.1, 0.1]),
        ((4, 0.0), [0.0, 0.0, 0.0]),
    ],
    ids=["one-attempt", "doubling", "capped", "constant", "no-wait"],
)
def test_delays(args, expected):
    assert delays(*args) == pytest.approx(expected)


def test_delays_refuses_nonsense():
    for bad in ((0, 1.0), (2, -1.0), (2, 1.0, 0.5)):
        with pytest.raises(ValueError):
            delays(*bad)


def test_retries_until_success_waiting_the_schedule():
    clock = Clock()
    fn = Flaky(OSError("a"), OSError("b"))
    assert retry(fn, attempts=3, delay=1.0, jitter=False, retry_if=lambda e: True, sleep=clock) == "ok"
    assert fn.calls == 3 and clock.waits == [1.0, 2.0]


def test_gives_up_after_attempts_with_the_last_exception():
    clock = Clock()
    fn = Flaky(OSError("1"), OSError("2"), OSError("3"), OSError("4"))
    with pytest.raises(OSError, match="3"):
        retry(fn, attempts=3, delay=1.0, max_delay=1.5, jitter=False, retry_if=lambda e: True, sleep=clock)
    assert fn.calls == 3 and clock.waits == [1.0, 1.5]
    assert clock.now == sum(delays(3, 1.0, 2.0, 1.5))  # the documented worst case, exactly


def test_an_exception_retry_if_refuses_is_raised_at_once():
    clock = Clock()
    fn = Flaky(KeyError("permanent"))
    with pytest.raises(KeyError):
        retry(fn, attempts=5, delay=1.0, retry_if=lambda e: isinstance(e, OSError), sleep=clock)
    assert fn.calls == 1 and clock.waits == []


def test_jitter_stays_within_half_and_all_of_each_wait():
    clock = Clock()
    for _ in range(50):
        fn = Flaky(OSError(), OSError(), OSError())
        retry(fn, attempts=4, delay=2.0, retry_if=lambda e: True, sleep=clock)
    firsts, seconds, thirds = clock.waits[0::3], clock.waits[1::3], clock.waits[2::3]
    assert all(1.0 <= w <= 2.0 for w in firsts) and all(2.0 <= w <= 4.0 for w in seconds) and all(4.0 <= w <= 8.0 for w in thirds)
    assert len(set(firsts)) > 1  # it is jittered


def test_on_retry_sees_each_failure_and_its_wait():
    seen = []
    fn = Flaky(OSError("a"), OSError("b"))
    retry(fn, attempts=3, delay=0.5, jitter=False, retry_if=lambda e: True, on_retry=lambda n, e, w: seen.append((n, str(e), w)), sleep=Clock())
    assert seen == [(1, "a", 0.5), (2, "b", 1.0)]


def test_cancel_during_the_wait_raises_cancelled_and_stops():
    cancel = threading.Event()
    fn = Flaky(OSError(), OSError())
    with pytest.raises(Cancelled):
        retry(fn, attempts=3, delay=1.0, retry_if=lambda e: True, cancel=cancel, sleep=lambda s: cancel.set())
    assert fn.calls == 1


def test_cancel_set_before_the_first_attempt_calls_nothing():
    cancel = threading.Event()
    cancel.set()
    fn = Flaky()
    with pytest.raises(Cancelled):
        retry(fn, attempts=3, delay=1.0, retry_if=lambda e: True, cancel=cancel)
    assert fn.calls == 0


def test_a_failure_caused_by_the_cancel_is_raised_as_is():
    cancel = threading.Event()

    def fn():
        cancel.set()
        raise OSError("interrupted")

    with pytest.raises(OSError, match="interrupted"):
        retry(fn, attempts=3, delay=1.0, retry_if=lambda e: True, cancel=cancel, sleep=Clock())


@pytest.mark.timeout(30)
def test_the_real_wait_ends_as_soon_as_cancel_is_set():
    """No fake sleep: a one-hour wait must end when another thread cancels (pytest-timeout guards a hang)."""
    cancel = threading.Event()
    fn = Flaky(OSError(), OSError())
    waiting = []

    def on_retry(n, exc, wait):
        waiting.append(wait)
        threading.Timer(0.05, cancel.set).start()

    with pytest.raises(Cancelled):
        retry(fn, attempts=3, delay=3600.0, jitter=False, retry_if=lambda e: True, cancel=cancel, on_retry=on_retry)
    assert waiting == [3600.0] and fn.calls == 1


def test_exceptions_outside_exception_are_never_retried():
    fn = Flaky(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        retry(fn, attempts=3, delay=0.0, retry_if=lambda e: True, sleep=Clock())
    assert fn.calls == 1
