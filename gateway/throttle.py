"""Login throttling: too many failed logins for one user id, or from one client address,
within a window get 429 with Retry-After until the window ends.

State is per worker process and in memory (a gateway restart forgets it; with N workers
and M gateways a determined client gets at most N*M times the limit). Memory is bounded:
the oldest keys are dropped first.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

MAX_KEYS = 100_000


@dataclass
class _Window:
    started: float
    failures: int


class FailureCounter:
    """Failures per key in fixed windows that start at a key's first failure."""

    def __init__(
        self,
        limit: int,
        window_s: float,
        *,
        max_keys: int = MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limit = limit
        self._window_s = window_s
        self._max_keys = max_keys
        self._clock = clock
        self._windows: dict[str, _Window] = {}

    def retry_after(self, key: str) -> int | None:
        """Seconds until ``key`` may try again, or None when it may try now."""
        window = self._windows.get(key)
        if window is None:
            return None
        remaining = window.started + self._window_s - self._clock()
        if remaining <= 0:
            del self._windows[key]
            return None
        return math.ceil(remaining) if window.failures >= self._limit else None

    def fail(self, key: str) -> None:
        now = self._clock()
        window = self._windows.get(key)
        if window is None or now - window.started >= self._window_s:
            self._windows.pop(key, None)
            if len(self._windows) >= self._max_keys:
                del self._windows[next(iter(self._windows))]
            self._windows[key] = _Window(now, 1)
        else:
            window.failures += 1

    def clear(self, key: str) -> None:
        self._windows.pop(key, None)


class LoginThrottle:
    def __init__(
        self,
        *,
        max_failures: int,
        max_failures_per_address: int,
        window_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._by_user = FailureCounter(max_failures, window_s, clock=clock)
        self._by_address = FailureCounter(max_failures_per_address, window_s, clock=clock)

    def retry_after(self, user_id: str, address: str) -> int | None:
        waits = [
            wait
            for wait in (self._by_user.retry_after(user_id), self._by_address.retry_after(address))
            if wait is not None
        ]
        return max(waits) if waits else None

    def failed(self, user_id: str, address: str) -> None:
        self._by_user.fail(user_id)
        self._by_address.fail(address)

    def succeeded(self, user_id: str) -> None:
        # The address keeps its count: one good password must not unlock guessing others.
        self._by_user.clear(user_id)
