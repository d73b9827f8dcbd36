"""Per-session rate limits, kept in process memory."""

from __future__ import annotations

import time
from dataclasses import dataclass

MAX_TRACKED = 50_000  # sessions remembered before full buckets are forgotten


@dataclass
class _Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    """A token bucket per key: ``burst`` messages at once, ``rate`` per second after."""

    def __init__(self) -> None:
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key: str, rate: float, burst: int) -> float:
        """Spend one token; 0.0 if allowed, else the seconds until one is free."""
        now = time.monotonic()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_TRACKED:
                self._forget_full(now, rate, burst)
            bucket = self._buckets[key] = _Bucket(tokens=float(burst), updated=now)
        bucket.tokens = min(float(burst), bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / rate if rate > 0 else 60.0

    def _forget_full(self, now: float, rate: float, burst: int) -> None:
        # A full bucket holds no information: forgetting it changes nothing.
        self._buckets = {
            key: b
            for key, b in self._buckets.items()
            if b.tokens + (now - b.updated) * rate < burst
        }
