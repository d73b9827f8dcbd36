"""A duty-cycled CPU burner: another process keeping a share of one core busy.

In every period (default 10 ms) it spins until it has used duty * period of
CPU (its own, time.process_time) and sleeps for the rest of the period, so duty
0.5 is half a core. Periods are scheduled from the start, so a late wake-up
shortens the next sleep instead of drifting; CPU a busy machine did not give a
spin is owed to the next periods (a period spins at most twice its duty, and
never past its end), so the share stays at duty whenever a core can give it.
It runs until SIGTERM or SIGINT (or --seconds, or its parent's exit), then
writes what it actually used to --out (JSON) and stdout:

    {"duty": 0.5, "period_s": 0.01, "wall_s": ..., "cpu_s": ..., "share": cpu_s / wall_s}

    python bench/burner.py --duty 0.5 --out burner.json

bench/run.py --burner DUTY starts one for the whole of each server's run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from types import FrameType

DEFAULT_PERIOD_S = 0.010


class _Stop:
    """Set by SIGTERM or SIGINT; the loop ends at its next check."""

    def __init__(self) -> None:
        self.stopped = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.stopped = True


def burn(duty: float, period_s: float, seconds: float | None, stop: _Stop) -> dict[str, float]:
    """Spins duty * period of CPU, sleeps the rest, every period, until stopped; the CPU it used.

    Each period spins until the CPU used since the start is duty of the time to
    the period's end: a spin that was preempted (the machine busy) is owed to
    the next periods, each spinning at most twice its duty and never past its
    end, so the burner catches up to duty of a core when it can, and no further.
    """
    wall0, cpu0 = time.monotonic(), time.process_time()
    parent = os.getppid()  # a burner whose parent died (the runner killed) stops too
    k = 0
    while (
        not stop.stopped
        and (seconds is None or time.monotonic() - wall0 < seconds)
        and os.getppid() == parent
    ):
        now = time.monotonic()
        k = max(k, int((now - wall0) / period_s))  # a late wake-up skips the missed periods
        end = wall0 + (k + 1) * period_s
        used = time.process_time() - cpu0
        # CPU due by this period's end, at most two periods' duty beyond what was used
        target = min(duty * (k + 1) * period_s, used + 2 * duty * period_s)
        while time.process_time() - cpu0 < target and time.monotonic() < end:
            pass
        k += 1
        left = end - time.monotonic()
        if left > 0:
            time.sleep(left)
    wall = time.monotonic() - wall0
    cpu = time.process_time() - cpu0
    return {
        "duty": duty,
        "period_s": period_s,
        "wall_s": wall,
        "cpu_s": cpu,
        "share": cpu / wall if wall > 0 else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duty", type=float, default=0.5, help="share of each period spun (0..1)")
    parser.add_argument("--period", type=float, default=DEFAULT_PERIOD_S, help="seconds")
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long")
    parser.add_argument("--out", help="write the figures here (JSON) at exit")
    args = parser.parse_args()
    if not 0.0 <= args.duty <= 1.0 or args.period <= 0:
        parser.error("--duty must be in [0, 1] and --period positive")
    stop = _Stop()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    figures = burn(args.duty, args.period, args.seconds, stop)
    text = json.dumps(figures)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)
    print(text, flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
