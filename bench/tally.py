"""One run's figures from what was sent and what the browsers recorded: failures, loss, latency."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.browsers import Received
from bench.measure import pct
from bench.phases import BURST_SEQ, BurstWindow


def failures(received: Received, sender_errors: int) -> dict[str, Any]:
    """Polls that failed, by kind, and the generators' own counts, summed."""
    kinds = dict(received.failures)
    gen_stats = received.gen_stats
    figures: dict[str, Any] = {
        "failures": kinds,
        # GET / of the session setup happens before any measurement and is the
        # demo page, not the app: counted apart.
        "setup_failed": kinds.pop("setup", 0),
        # polls and send calls that failed
        "failed": sum(kinds.values()) + sender_errors,
        "fail_samples": received.fail_samples[:10],
        "gens": gen_stats,
        "gaps": sum(g["gaps"] for g in gen_stats),
        "foreign": sum(g["foreign"] for g in gen_stats),
        "stale_reconnects": sum(g["stale_reconnects"] for g in gen_stats),
    }
    holds = [g["empty_hold"] for g in gen_stats if g["empty_hold"]["n"]]
    if holds:
        figures["empty_hold_min_s"] = min(h["min"] for h in holds)
        figures["empty_hold_max_s"] = max(h["max"] for h in holds)
    return figures


def delivery(
    records: list[list[Any]], sent: list[list[Any]], bursts: Sequence[BurstWindow]
) -> dict[str, Any]:
    """Lost, duplicated and unexpected messages, the steady messages' latency, each burst's time.

    `records` are [seq, browser index, t sent, t received]; `sent` are
    [seq, browser index, t sent]. Seqs below 0 are warm-up messages, left out.
    """
    if not sent:
        return {"lost": None}
    got: dict[int, list[float]] = {}
    for seq, _idx, t, t_recv in records:
        got.setdefault(seq, []).append(t_recv - t)
    sent_seqs = {s[0] for s in sent}
    lat = [got[s[0]][0] * 1000 for s in sent if s[0] < BURST_SEQ and s[0] in got]
    figures: dict[str, Any] = {
        "lost": sum(1 for s in sent_seqs if s not in got),
        "duplicates": sum(len(v) - 1 for s, v in got.items() if s >= 0),
        "unexpected": sum(1 for s in got if s >= 0 and s not in sent_seqs),
        "lat_n": len(lat),
        "lat_p50_ms": pct(lat, 0.5),
        "lat_p99_ms": pct(lat, 0.99),
        "lat_max_ms": max(lat) if lat else None,
    }
    for b in bursts:
        figures.update(_burst_arrival(records, b))
    return figures


def _burst_arrival(records: list[list[Any]], b: BurstWindow) -> dict[str, Any]:
    """When the burst's browser had all of it: from the first send, the last, and the commit."""
    if not b.sent or b.first_t is None:  # nothing sent: no figures, as for a burst not run
        return {}
    lo, hi = b.seq_lo, b.seq_lo + BURST_SEQ
    recv = [r[3] for r in records if lo <= r[0] < hi]
    complete = len({r[0] for r in records if lo <= r[0] < hi}) == b.sent
    last = max(recv) if complete else None
    figures: dict[str, Any] = {
        f"{b.key}_complete": complete,
        f"{b.key}_received": len(recv),
        # for the one send_many call, first_t is the call's start
        f"{b.key}_total_ms": None if last is None else (last - b.first_t) * 1000,
        f"{b.key}_after_last_send_ms": None if last is None else (last - b.last_done) * 1000,
    }
    if b.commit_t:
        figures[f"{b.key}_from_commit_ms"] = None if last is None else (last - b.commit_t) * 1000
    return figures
