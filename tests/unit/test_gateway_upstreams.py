"""Balancing: least in flight among healthy instances, cool-down, probing back in."""

from __future__ import annotations

import asyncio
from collections import Counter

from gateway.upstreams import HEALTHY_PROBE_EVERY, Balancer, Upstream

URLS = ["http://a:1", "http://b:1", "http://c:1"]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def healthy_balancer(clock: Clock | None = None, urls: list[str] = URLS) -> Balancer:
    balancer = Balancer(urls, cooldown_s=5, clock=clock or Clock())
    for upstream in balancer.upstreams:
        balancer.recovered(upstream)
    return balancer


def by_url(balancer: Balancer, url: str) -> Upstream:
    return next(u for u in balancer.upstreams if u.url == url)


def test_idle_instances_take_turns() -> None:
    balancer = healthy_balancer()
    picks = Counter(balancer.pick().url for _ in range(30))  # type: ignore[union-attr]
    assert picks == {url: 10 for url in URLS}


def test_fewest_in_flight_wins() -> None:
    balancer = healthy_balancer()
    a, b, c = balancer.upstreams
    balancer.started(a)
    balancer.started(a)
    balancer.started(c)
    assert {balancer.pick() for _ in range(5)} == {b}
    balancer.finished(a)
    balancer.finished(a)
    assert balancer.pick() in {a, b}
    assert a.in_flight == 0 and c.in_flight == 1


def test_excluded_and_failed_instances_are_not_picked() -> None:
    clock = Clock()
    balancer = healthy_balancer(clock)
    a, b, c = balancer.upstreams
    balancer.failed(a, "connect_error")
    assert {balancer.pick() for _ in range(6)} == {b, c}
    assert {balancer.pick(exclude=[b]) for _ in range(6)} == {c}
    balancer.failed(b, "status 500")
    assert {balancer.pick() for _ in range(6)} == {c}
    assert not a.healthy and not b.healthy


def test_when_all_are_out_the_one_out_longest_is_tried() -> None:
    clock = Clock()
    balancer = healthy_balancer(clock)
    a, b, c = balancer.upstreams
    balancer.failed(b, "connect_error")
    clock.now += 1
    balancer.failed(a, "status 500")
    clock.now += 1
    balancer.failed(c, "timeout")
    assert not balancer.any_healthy()
    assert {balancer.pick() for _ in range(6)} == {b}
    assert balancer.pick(exclude=[b]) is a
    assert balancer.pick(exclude=[a, b, c]) is None


def test_failed_instance_is_probed_after_its_cool_down_only() -> None:
    clock = Clock()
    balancer = healthy_balancer(clock)
    for upstream in balancer.upstreams:
        upstream.last_probe = clock.now
    a = balancer.upstreams[0]
    balancer.failed(a, "connect_error")
    assert balancer.due_for_probe(2.0) == []
    clock.now += 5
    assert balancer.due_for_probe(2.0) == [a]


def test_healthy_instances_are_probed_less_often() -> None:
    clock = Clock()
    balancer = healthy_balancer(clock)
    for upstream in balancer.upstreams:
        upstream.last_probe = clock.now
    clock.now += HEALTHY_PROBE_EVERY - 0.5
    assert balancer.due_for_probe(1.0) == []
    clock.now += 0.5
    assert balancer.due_for_probe(1.0) == balancer.upstreams


def test_probe_lets_ready_instances_in_and_keeps_others_out() -> None:
    clock = Clock()
    balancer = Balancer(URLS, cooldown_s=5, clock=clock)
    assert not balancer.any_healthy()  # nothing is trusted before its first probe
    answers = {"http://a:1": None, "http://b:1": "connect_error", "http://c:1": "status 503"}

    async def check(url: str) -> str | None:
        return answers[url]

    asyncio.run(balancer.probe(check, 1.0))
    assert [u.healthy for u in balancer.upstreams] == [True, False, False]
    b = by_url(balancer, "http://b:1")

    # Still out, it is asked again next round: no new cool-down for a failed probe.
    clock.now += 1
    assert b in balancer.due_for_probe(1.0)
    answers["http://b:1"] = None
    asyncio.run(balancer.probe(check, 1.0))
    assert b.healthy


def test_a_healthy_instance_failing_its_probe_is_taken_out_for_a_cool_down() -> None:
    clock = Clock()
    balancer = healthy_balancer(clock)
    a = balancer.upstreams[0]

    async def check(url: str) -> str | None:
        return "connect_error" if url == a.url else None

    clock.now += HEALTHY_PROBE_EVERY
    asyncio.run(balancer.probe(check, 1.0))
    assert not a.healthy
    assert a.down_until == clock.now + 5
    clock.now += 1
    assert a not in balancer.due_for_probe(1.0)


def test_observer_sees_every_change() -> None:
    seen: list[tuple[str, str, bool, int]] = []
    balancer = Balancer(
        URLS[:1],
        cooldown_s=1,
        observer=lambda u, change: seen.append((u.url, change, u.healthy, u.in_flight)),
    )
    upstream = balancer.upstreams[0]
    balancer.recovered(upstream)
    balancer.started(upstream)
    balancer.finished(upstream)
    balancer.failed(upstream, "timeout")
    assert seen == [
        ("http://a:1", "health", True, 0),
        ("http://a:1", "in_flight", True, 1),
        ("http://a:1", "in_flight", True, 0),
        ("http://a:1", "health", False, 0),
    ]
