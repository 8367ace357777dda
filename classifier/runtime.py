"""Process-wide settings for the processes that classify (CLI, batch workers, live capture)."""

from __future__ import annotations

import gc

GC_GEN0_THRESHOLD = 20_000


def tune_gc() -> None:
    """Keep the cyclic garbage collector off the hot path. Flows and dissectors are allocated by the
    thousand per chunk and live for many chunks; with the default gen-0 threshold (700) the collector
    walks every live flow again and again and took about a third of the run time. Objects alive after
    start-up (modules, the parser) are frozen out of collection altogether."""
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])
