"""The one way kvgpt's benchmarks time code: wall-clock milliseconds per call, variants interleaved round-robin.

On a shared machine background load comes and goes; timing every variant once per round, in turn, spreads it over
all of them alike (and min or median over rounds says which one was asked for). Timing never goes into a test.
Introduced in notebooks/08_benchmarks.ipynb.
"""

from __future__ import annotations

import statistics
import time


def call_ms(fn) -> float:
    """Milliseconds one call of fn() takes (time.perf_counter)."""
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def repeat_ms(fn, repeats: int, reduce=statistics.median) -> float:
    """fn() `repeats` times -> reduce(milliseconds per call): the median by default, min for a lower bound."""
    return reduce([call_ms(fn) for _ in range(repeats)])


def interleaved_ms(calls: dict, repeats: int, reduce=statistics.median) -> dict:
    """{name: fn} -> {name: reduce(ms per call)}, timed round-robin: every round runs each fn once, the first
    one shifting each round so no variant always runs after the same other."""
    names, times = list(calls), {name: [] for name in calls}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(call_ms(calls[name]))
    return {name: reduce(ts) for name, ts in times.items()}
