"""Waiting for something a real process does: poll a check until it holds or the time is up."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any


def wait_until(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition",
               explain: Callable[[], str] | None = None, interval: float = 0.1, tolerate: bool = False) -> Any:
    """The check's first truthy value. Times out with an AssertionError naming `what` and, for a failure a person
    can act on, what `explain` says then (a process's log). `tolerate`: a check that raises counts as not yet
    (a server still starting)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if tolerate:
            value = None
            with contextlib.suppress(Exception):
                value = check()
        else:
            value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}" + (f"\n{explain()}" if explain else ""))
