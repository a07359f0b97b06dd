"""Choosing a dialogs instance: the healthy one with the fewest requests in flight.

An instance that fails (connection error, timeout or 5xx) is taken out for a cool-down;
after it the prober asks its ``/readyz`` every probe interval and lets it back in on 200.
Healthy instances are probed too, less often, so an idle gateway notices a dead instance
before a client does.

When every instance is out, requests go to them anyway, the one out longest first (Envoy
calls this panic mode): a rolling restart or a burst of slow answers can take all instances
out for a moment, and a 503 should come from a real attempt, not from stale bookkeeping.

State is per worker process: each worker balances its own requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

log = logging.getLogger("gateway.upstreams")

# Healthy instances are probed once every this many probe intervals.
HEALTHY_PROBE_EVERY = 5


@dataclass(eq=False)
class Upstream:
    url: str
    healthy: bool = False
    in_flight: int = 0
    # While unhealthy: when the next probe may let it back in.
    down_until: float = 0.0
    last_probe: float = 0.0


# Called with the instance and what changed: "health" or "in_flight".
Observer = Callable[[Upstream, str], None]


class Balancer:
    def __init__(
        self,
        urls: Iterable[str],
        *,
        cooldown_s: float,
        clock: Callable[[], float] = time.monotonic,
        observer: Observer | None = None,
    ) -> None:
        self.upstreams = [Upstream(url) for url in urls]
        if not self.upstreams:
            raise ValueError("at least one upstream is required")
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._observer = observer
        self._next = 0

    def pick(self, exclude: Iterable[Upstream] = ()) -> Upstream | None:
        """The healthy instance with the fewest requests in flight, not in ``exclude``; when
        none is healthy, the one taken out longest ago. None when all are excluded.

        Ties go round-robin, so an idle gateway still spreads its requests.
        """
        excluded = set(exclude)
        count = len(self.upstreams)
        start = self._next
        self._next = (start + 1) % count
        best: Upstream | None = None
        for offset in range(count):
            candidate = self.upstreams[(start + offset) % count]
            if not candidate.healthy or candidate in excluded:
                continue
            if best is None or candidate.in_flight < best.in_flight:
                best = candidate
        if best is None:
            out = [u for u in self.upstreams if u not in excluded]
            best = min(out, key=lambda u: u.down_until, default=None)
        return best

    def any_healthy(self) -> bool:
        return any(upstream.healthy for upstream in self.upstreams)

    def started(self, upstream: Upstream) -> None:
        upstream.in_flight += 1
        self._notify(upstream, "in_flight")

    def finished(self, upstream: Upstream) -> None:
        upstream.in_flight -= 1
        self._notify(upstream, "in_flight")

    def failed(self, upstream: Upstream, reason: str) -> None:
        """Take ``upstream`` out until its cool-down ends and a probe succeeds."""
        if upstream.healthy:
            log.warning(
                "upstream taken out",
                extra={"fields": {"upstream": upstream.url, "reason": reason}},
            )
        upstream.healthy = False
        upstream.down_until = self._clock() + self._cooldown_s
        self._notify(upstream, "health")

    def recovered(self, upstream: Upstream) -> None:
        if not upstream.healthy:
            log.info("upstream in", extra={"fields": {"upstream": upstream.url}})
        upstream.healthy = True
        self._notify(upstream, "health")

    def due_for_probe(self, interval_s: float) -> list[Upstream]:
        now = self._clock()
        due = []
        for upstream in self.upstreams:
            if upstream.healthy:
                if now - upstream.last_probe >= interval_s * HEALTHY_PROBE_EVERY:
                    due.append(upstream)
            elif now >= upstream.down_until:
                due.append(upstream)
        return due

    async def probe(self, check: Callable[[str], Awaitable[str | None]], interval_s: float) -> None:
        """One round: ask every due instance; ``check`` returns None when ready, else why not."""
        due = self.due_for_probe(interval_s)
        if not due:
            return
        results = await asyncio.gather(*(check(upstream.url) for upstream in due))
        now = self._clock()
        for upstream, problem in zip(due, results, strict=True):
            upstream.last_probe = now
            if problem is None:
                self.recovered(upstream)
            elif upstream.healthy:
                self.failed(upstream, f"probe: {problem}")
            # An instance already out stays out, and is asked again next round: a restart
            # takes a second or two, and it should be back as soon as it is ready.

    async def probe_forever(
        self, check: Callable[[str], Awaitable[str | None]], interval_s: float
    ) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.probe(check, interval_s)
            except Exception:  # the prober must outlive any one bad round
                log.exception("upstream probe round failed")

    def _notify(self, upstream: Upstream, change: str) -> None:
        if self._observer is not None:
            self._observer(upstream, change)
