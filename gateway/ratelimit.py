"""A token bucket per credential, in the gateway's memory: at most `per_minute` a minute, in bursts of as many.

Each gateway process counts on its own (N replicas let a credential send N times as many); a restart forgets.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class RateLimiter:
    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic, max_keys: int = 10_000) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0  # tokens a second
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when)

    def take(self, key: str) -> float:
        """Take one token for `key`: 0 when it may go ahead, else the seconds until a token is back."""
        now = self.clock()
        tokens, when = self._buckets.get(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - when) * self.rate)
        if tokens >= 1:
            self._buckets[key] = (tokens - 1, now)
            self._forget_full(now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1 - tokens) / self.rate

    def retry_after(self, wait_s: float) -> str:
        """The Retry-After header's value: whole seconds, rounded up, at least 1."""
        return str(max(1, math.ceil(wait_s)))

    def _forget_full(self, now: float) -> None:
        # A bucket that has refilled is the same as no bucket: dropping those bounds the memory by the
        # credentials active in the last minute.
        if len(self._buckets) > self.max_keys:
            full_after = self.capacity / self.rate
            self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < full_after}
