"""How long a stream waits in silence before checking that the worker still answers (Connection.stream)."""

from __future__ import annotations

import os

IDLE_PROBE = 5.0  # seconds of silence before checking that the worker still answers
IDLE_PROBE_ENV = "SSHEXEC_IDLE_PROBE"  # a knob for tests: a shorter silence then proves the same thing


def idle_probe_seconds() -> float:
    """IDLE_PROBE, or the positive number of seconds SSHEXEC_IDLE_PROBE sets (ValueError naming it if not one)."""
    raw = os.environ.get(IDLE_PROBE_ENV, "").strip()
    if not raw:
        return IDLE_PROBE
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise ValueError(f"{IDLE_PROBE_ENV}={raw!r} is not a positive number of seconds; unset it for the default ({IDLE_PROBE:g} s)")
    return value
