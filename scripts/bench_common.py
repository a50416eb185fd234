"""What every benchmark script shares: the peak device memory, a median timing, and writing its JSON result to
bench/results/."""

from __future__ import annotations

import json
import os
import statistics
import time


def peak_memory_gb(devices=None) -> float | None:
    """The largest peak over `devices` (default: this process's), GiB; None where the backend keeps no stats."""
    import jax

    peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in (devices or jax.local_devices())]
    peaks = [p for p in peaks if p is not None]
    return max(peaks) / 2**30 if peaks else None


def timed(fn, *args, reps: int = 5) -> float:
    """Median seconds of `fn(*args)` over `reps` calls, after one warm-up call (compile)."""
    import jax

    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def write_result(result: dict, out_dir: str, filename: str) -> str:
    """Write one run's JSON (docs/formats.md) as out_dir/filename; returns the path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, filename)
    with open(path, "w") as fh:
        json.dump(result, fh, indent=2)
    return path
