"""Host and device memory readings for logs and benchmarks (Linux /proc; device allocator statistics)."""

from __future__ import annotations


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_gb() -> float | None:
    kb = _status_kb("VmRSS")
    return None if kb is None else kb / 2**20


_EARLIER_PEAK_KB = 0  # the largest VmHWM seen before a reset


def peak_rss_gb(since_reset: bool = True) -> float | None:
    """The process's peak resident memory (VmHWM) since the last `reset_peak_rss`, or since start."""
    kb = _status_kb("VmHWM")
    if kb is None:
        return None
    return (kb if since_reset else max(kb, _EARLIER_PEAK_KB)) / 2**20


def peak_rss_mb() -> float:
    """This process's peak resident memory since start, MiB (VmHWM: unlike ru_maxrss it does not include the
    parent's memory inherited across fork+exec; ru_maxrss where /proc is not readable)."""
    gb = peak_rss_gb(since_reset=False)
    if gb is not None:
        return gb * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux clear_refs 5); False where not permitted."""
    global _EARLIER_PEAK_KB
    _EARLIER_PEAK_KB = max(_EARLIER_PEAK_KB, _status_kb("VmHWM") or 0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_device_gb(devices=None) -> float | None:
    """The largest allocator peak over `devices` (default: this process's), GiB; None where not kept (CPU)."""
    import jax

    peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in (devices or jax.local_devices())]
    peaks = [p for p in peaks if p is not None]
    return max(peaks) / 2**30 if peaks else None
