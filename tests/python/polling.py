"""Bounded polling for state that no event announces (a file appearing, a metric reaching a
value, a service coming back): never a sleep standing in for an event."""

import time


def poll(what: str, fn, timeout: float, interval: float = 0.05):
    """Calls fn() until it returns a truthy value (returned) or `timeout` passes (fails)."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")
        time.sleep(interval)  # polling interval, not synchronisation
