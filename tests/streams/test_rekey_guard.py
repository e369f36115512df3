"""streams/rekey.py's guard against a librdkafka call that blocks past its own timeout (librdkafka issues 5456,
5511: send_offsets_to_transaction when the group coordinator dies): the caller gets StuckCall and goes on."""

from __future__ import annotations

import threading
import time

import pytest

from streams.rekey import StuckCall, guarded


def test_a_call_that_returns_gives_its_value():
    assert guarded("sum", lambda: 1 + 1, timeout_s=1) == 2


def test_a_call_that_raises_raises_in_the_caller():
    def fail() -> None:
        raise ValueError("broker said no")

    with pytest.raises(ValueError, match="broker said no"):
        guarded("fail", fail, timeout_s=1)


def test_a_call_stuck_past_its_timeout_is_abandoned():
    release = threading.Event()
    started = time.monotonic()
    with pytest.raises(StuckCall, match="stuck did not return in 1 s"):
        guarded("stuck", lambda: release.wait(60), timeout_s=0.5, grace_s=0.5)
    assert time.monotonic() - started < 5
    release.set()  # the abandoned helper thread ends with the test
