"""A batch step that fails for a passing reason (PostgreSQL or the broker away) is retried until it succeeds, and
its result is what the batch goes on with: a city's first fact looked up while PostgreSQL is down waits for it
rather than ending the batch (which Faust would ack, losing its facts)."""

from __future__ import annotations

import asyncio

import pytest

from streams import worker


def test_a_failing_step_is_retried_and_its_result_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []

    async def no_wait(delay: float) -> None:
        waits.append(delay)

    monkeypatch.setattr(worker.asyncio, "sleep", no_wait)
    calls = 0

    async def city_exists() -> bool:
        nonlocal calls
        calls += 1
        if calls < 4:
            raise ConnectionError("PostgreSQL is not answering")
        return True

    assert asyncio.run(worker.until_done("looking up a city", city_exists)) is True
    assert calls == 4 and waits == [0.5, 1.0, 2.0]  # backing off, doubling
