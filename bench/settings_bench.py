"""Project settings with another hold, for short smoke runs (``bench/run.py --hold S``).

The benchmark itself serves ``project.settings`` as it is (LONGPOLL_TIMEOUT 10 s);
this module is used only when ``--hold`` is not 10.
"""

import os

from project.settings import *  # noqa: F403

LONGPOLL_TIMEOUT = float(os.environ.get("BENCH_HOLD", "10"))
