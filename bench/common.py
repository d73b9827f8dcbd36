"""What the runner's modules (bench/run.py and the modules it imports) share.

Where things are, the interpreter that starts every child process, the one
host ever contacted, and the runner's log line.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
RAW = RESULTS / "raw"  # per-run load generator and server logs, sender lists; git ignores it
PY = sys.executable  # children run in the runner's virtualenv ...
BIN = Path(PY).parent  # ... and so do its daphne, uvicorn and py-spy
HOST = "127.0.0.1"  # the only address the bench talks to


def log(*args: Any) -> None:
    print(time.strftime("%H:%M:%S"), *args, flush=True)
