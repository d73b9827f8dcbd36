"""longpoll_app.limits.TokenBuckets on a clock the test moves: ``burst`` takes at
once, then ``rate`` per second, per key, and what ``take`` says about the wait.

test_consumers checks that a send past the burst is answered 429; these check
the arithmetic behind it, which real time could only tell apart with long sleeps.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from longpoll_app import limits
from longpoll_app.limits import TokenBuckets

# Above any float noise of the clock's arithmetic (a monotonic clock of days is
# ~1e5 s, whose spacing is ~1e-11 s), far below any wait that matters.
EPSILON = 1e-9


class Clock:
    """What ``time.monotonic`` returns, moved by the test."""

    def __init__(self) -> None:
        self.now = 86_400.0  # a day in: not 0, as a real monotonic clock is not

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    # limits reads time.monotonic through its own ``time`` name: only it sees this clock.
    fake = Clock()
    monkeypatch.setattr(limits, "time", SimpleNamespace(monotonic=fake))
    return fake


def take_all(buckets: TokenBuckets, key: str, rate: float, burst: int) -> int:
    """Takes that succeed at this instant."""
    taken = 0
    while buckets.take(key, rate, burst) == 0.0:
        taken += 1
        assert taken <= burst, "a bucket gave more than its burst at one instant"
    return taken


def test_a_new_key_gets_its_burst_at_once_then_waits_a_token(clock: Clock) -> None:
    buckets = TokenBuckets()
    assert [buckets.take("s", 2.0, 3) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("s", 2.0, 3) == pytest.approx(0.5)  # one token at 2 per second


def test_tokens_come_back_at_the_rate(clock: Clock) -> None:
    buckets = TokenBuckets()
    assert take_all(buckets, "s", 4.0, 2) == 2
    clock.advance(0.1)  # 0.4 of a token
    assert buckets.take("s", 4.0, 2) == pytest.approx(0.15)
    clock.advance(0.15 + EPSILON)
    assert buckets.take("s", 4.0, 2) == 0.0
    clock.advance(0.5)  # two tokens
    assert take_all(buckets, "s", 4.0, 2) == 2


def test_an_idle_bucket_fills_up_to_its_burst_and_no_further(clock: Clock) -> None:
    buckets = TokenBuckets()
    take_all(buckets, "s", 10.0, 5)
    clock.advance(3600.0)  # 36,000 tokens' worth of time
    assert take_all(buckets, "s", 10.0, 5) == 5


def test_the_wait_it_names_is_exactly_enough(clock: Clock) -> None:
    buckets = TokenBuckets()
    take_all(buckets, "s", 3.0, 1)
    clock.advance(0.1)
    wait = buckets.take("s", 3.0, 1)
    assert wait == pytest.approx(1 / 3 - 0.1)
    clock.advance(wait * 0.99)
    assert buckets.take("s", 3.0, 1) > 0.0  # not yet
    clock.advance(wait * 0.01 + EPSILON)
    assert buckets.take("s", 3.0, 1) == 0.0


def test_refused_takes_spend_nothing(clock: Clock) -> None:
    """A client that keeps trying is not pushed further back: no debt builds up."""
    buckets = TokenBuckets()
    take_all(buckets, "s", 1.0, 1)
    waits = []
    for _ in range(5):
        waits.append(buckets.take("s", 1.0, 1))
        clock.advance(0.1)
    assert waits == pytest.approx([1.0, 0.9, 0.8, 0.7, 0.6])
    clock.advance(0.5 + EPSILON)  # 1 s after the last token was spent
    assert buckets.take("s", 1.0, 1) == 0.0


def test_keys_have_buckets_of_their_own(clock: Clock) -> None:
    buckets = TokenBuckets()
    take_all(buckets, "busy", 1.0, 2)
    assert buckets.take("busy", 1.0, 2) > 0.0
    assert take_all(buckets, "quiet", 1.0, 2) == 2
    assert take_all(TokenBuckets(), "busy", 1.0, 2) == 2  # and instances share nothing


def test_a_lower_burst_applies_to_a_bucket_at_once(clock: Clock) -> None:
    """The rate and burst come from the settings on every take: a lowered burst
    caps a full bucket at the new size on its next take."""
    buckets = TokenBuckets()
    assert buckets.take("s", 1.0, 30) == 0.0  # 29 left
    assert take_all(buckets, "s", 1.0, 3) == 3


def test_a_zero_rate_never_refills(clock: Clock) -> None:
    buckets = TokenBuckets()
    assert take_all(buckets, "s", 0.0, 2) == 2
    clock.advance(3600.0)
    assert buckets.take("s", 0.0, 2) == 60.0  # a wait to name, not a division by zero


def test_past_max_tracked_full_buckets_are_forgotten_and_spent_ones_kept(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "MAX_TRACKED", 2)
    buckets = TokenBuckets()
    take_all(buckets, "spent", 1.0, 2)
    buckets.take("once", 1.0, 2)
    clock.advance(0.5)  # "spent" is at 0.5 of 2, "once" at 1.5: neither is full
    assert buckets.take("new", 1.0, 2) == 0.0
    assert set(buckets._buckets) == {"spent", "once", "new"}  # nothing could be forgotten

    clock.advance(1.0)  # "once" and "new" are full again; "spent" is at 1.5
    buckets.take("newer", 1.0, 2)
    assert set(buckets._buckets) == {"spent", "newer"}
    # The spent bucket still limits its key...
    assert buckets.take("spent", 1.0, 2) == 0.0
    assert buckets.take("spent", 1.0, 2) == pytest.approx(0.5)
    # ...and a forgotten one starts full, as it was: forgetting it changed nothing.
    assert take_all(buckets, "once", 1.0, 2) == 2


def test_a_known_key_at_the_limit_forgets_nothing(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "MAX_TRACKED", 2)
    buckets = TokenBuckets()
    buckets.take("a", 1.0, 2)
    buckets.take("b", 1.0, 2)
    clock.advance(10.0)  # both full
    buckets.take("a", 1.0, 2)  # no new key: no sweep
    assert set(buckets._buckets) == {"a", "b"}


def test_real_time_refills_too() -> None:
    """On the real clock (no fake): a token comes back after 1/rate seconds, and
    not long before. Generous margins: other processes share the machine."""
    import time

    buckets = TokenBuckets()
    assert buckets.take("s", 5.0, 1) == 0.0
    wait = buckets.take("s", 5.0, 1)
    assert 0.1 < wait <= 0.2  # 0.2 s for a token at 5 per second, less what has passed
    time.sleep(wait + 0.05)
    assert buckets.take("s", 5.0, 1) == 0.0
