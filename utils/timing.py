"""Timing small pieces of code fairly on a shared machine."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["best_times"]


def best_times(
    functions: dict[str, Callable[[], object]], rounds: int = 7, clock: Callable[[], float] = time.process_time
) -> dict[str, float]:
    """Fastest of ``rounds`` calls of each function, in seconds, the functions taking turns in every round.

    Taking turns means that a burst of load from other processes hits every function alike, and the minimum
    discards the calls such a burst slowed down. The default clock is the process's CPU time, which other
    processes' load does not inflate at all (it counts every thread of this process, so multi-threaded BLAS is
    counted in full); pass ``time.perf_counter`` for wall-clock time. Each function is called once first, as a
    warm-up (allocations, lazy initialisation), and that call is not counted.
    """
    for function in functions.values():
        function()
    best = dict.fromkeys(functions, float("inf"))
    for _ in range(rounds):
        for name, function in functions.items():
            start = clock()
            function()
            best[name] = min(best[name], clock() - start)
    return best
