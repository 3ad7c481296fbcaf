import random

import pytest

from orchestrator.backoff import reconnect_delay_s, retry_delay_s


def test_retry_delay_doubles_up_to_the_cap() -> None:
    top = random.Random()
    top.random = lambda: 1.0  # type: ignore[method-assign]
    delays = [retry_delay_s(n, base_s=1.0, max_s=10.0, rng=top) for n in range(1, 7)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_retry_delay_is_jittered_within_the_upper_half() -> None:
    rng = random.Random(7)
    draws = [retry_delay_s(3, base_s=1.0, max_s=100.0, rng=rng) for _ in range(200)]
    assert min(draws) >= 2.0
    assert max(draws) <= 4.0
    assert len(set(draws)) > 150


def test_retry_delay_survives_huge_attempt_numbers() -> None:
    assert retry_delay_s(10_000, base_s=1.0, max_s=30.0, rng=random.Random(1)) <= 30.0


def test_retry_delay_rejects_attempt_zero() -> None:
    with pytest.raises(ValueError, match="attempt must be >= 1"):
        retry_delay_s(0, base_s=1.0, max_s=2.0)


def test_reconnect_delay_grows_and_caps() -> None:
    assert [reconnect_delay_s(n) for n in (1, 2, 3)] == [0.1, 0.2, 0.4]
    assert reconnect_delay_s(50) == 2.0
