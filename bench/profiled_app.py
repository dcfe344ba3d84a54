"""`python -m bench.profiled_app`: `python -m app` (one worker) with cProfile behind signals.

SIGUSR1 starts profiling, SIGUSR2 stops it and writes the stats to $SENTINEL_PROFILE_OUT, so
a profile holds only the measured phase (no start-up, no warm-up). bench/exact_hits.py drives it.
"""

from __future__ import annotations

import cProfile
import os
import signal
from types import FrameType

from app.__main__ import main

_profile = cProfile.Profile()


def _start(signum: int, frame: FrameType | None) -> None:
    _profile.enable()


def _stop(signum: int, frame: FrameType | None) -> None:
    _profile.disable()
    _profile.dump_stats(os.environ["SENTINEL_PROFILE_OUT"])


if __name__ == "__main__":
    os.environ["WEB_CONCURRENCY"] = "1"  # the profile is of the one process serving
    signal.signal(signal.SIGUSR1, _start)
    signal.signal(signal.SIGUSR2, _stop)
    main()
