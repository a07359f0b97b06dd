"""Login throttling, on a clock the test moves."""

from __future__ import annotations

from gateway.throttle import FailureCounter, LoginThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_user_is_throttled_after_the_limit_until_the_window_ends() -> None:
    clock = Clock()
    throttle = LoginThrottle(max_failures=3, max_failures_per_address=100, window_s=60, clock=clock)
    for _ in range(3):
        assert throttle.retry_after("alice", "10.0.0.1") is None
        throttle.failed("alice", "10.0.0.1")
    clock.now += 10
    assert throttle.retry_after("alice", "10.0.0.1") == 50
    # Another address does not help: the limit is per user id too.
    assert throttle.retry_after("alice", "10.0.0.2") == 50
    # Other users from the same address are not affected.
    assert throttle.retry_after("bob", "10.0.0.1") is None
    clock.now += 50
    assert throttle.retry_after("alice", "10.0.0.1") is None


def test_address_is_throttled_across_user_ids() -> None:
    clock = Clock()
    throttle = LoginThrottle(max_failures=3, max_failures_per_address=5, window_s=60, clock=clock)
    for i in range(5):
        throttle.failed(f"user-{i}", "10.0.0.9")
    assert throttle.retry_after("user-new", "10.0.0.9") == 60
    assert throttle.retry_after("user-new", "10.0.0.10") is None


def test_success_clears_the_user_but_not_the_address() -> None:
    clock = Clock()
    throttle = LoginThrottle(max_failures=2, max_failures_per_address=3, window_s=60, clock=clock)
    throttle.failed("alice", "10.0.0.1")
    throttle.failed("alice", "10.0.0.1")
    assert throttle.retry_after("alice", "10.0.0.3") is not None
    throttle.succeeded("alice")
    assert throttle.retry_after("alice", "10.0.0.3") is None
    throttle.failed("mallory", "10.0.0.1")
    assert throttle.retry_after("carol", "10.0.0.1") is not None


def test_a_new_window_starts_after_the_old_one() -> None:
    clock = Clock()
    counter = FailureCounter(2, 60, clock=clock)
    counter.fail("k")
    clock.now += 61
    counter.fail("k")
    assert counter.retry_after("k") is None
    counter.fail("k")
    assert counter.retry_after("k") == 60


def test_memory_is_bounded() -> None:
    counter = FailureCounter(1, 60, max_keys=100, clock=Clock())
    for i in range(1000):
        counter.fail(f"key-{i}")
    assert counter.retry_after("key-999") == 60
    assert counter.retry_after("key-0") is None
    assert len(counter._windows) <= 100
