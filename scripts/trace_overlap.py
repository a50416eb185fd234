"""How much of a profiled step's host <-> device copying ran under its kernels, read from a JAX profiler trace.

    python scripts/trace_overlap.py TRACE_DIR_OR_FILE      # perfetto_trace.json.gz from bench_train.py --trace DIR

The trace is the Chrome-trace JSON that `jax.profiler.trace(dir, create_perfetto_trace=True)` writes (CUPTI's GPU
activity: one thread per CUDA stream). On the GPU streams, an event whose name says memcpy (or memset) is a copy:
host-to-device (HtoD / H2D), device-to-host (DtoH / D2H) or other, read from its name and its `memcpy_details`;
every other event there is a kernel. A stream's own name does not decide: it lists every kind of work the stream
carried (`Stream #14(MemcpyH2D,Compute,MemcpyD2D,Memset,MemcpyD2H)` is XLA's compute stream).
Prints, in seconds: the span of the GPU activity and the time nothing ran on the GPU in it (where the host held
the work back), the time any kernel ran, the time each copy direction ran, the time copies ran under kernels
(`copy_under_kernels_s`) and the time they ran alone (`copy_exposed_s`), and the time both directions ran at once.
Offloaded training (cosmos_jax/offload_overlap.py) hides its copies when `copy_exposed_s` is small against `copy_s`.
"""

from __future__ import annotations

import gzip
import json
import pathlib
import re
import sys

_H2D = re.compile(r"htod|h2d|host.?to.?device", re.I)
_D2H = re.compile(r"dtoh|d2h|device.?to.?host", re.I)
_MEMCPY = re.compile(r"memcpy|memset", re.I)


def find_trace(path: pathlib.Path) -> pathlib.Path:
    if path.is_file():
        return path
    found = sorted(path.rglob("perfetto_trace.json.gz")) or sorted(path.rglob("*.trace.json.gz"))
    if not found:
        raise SystemExit(f"{path}: no perfetto_trace.json.gz under it (jax.profiler.trace(..., "
                         "create_perfetto_trace=True) writes one)")
    return found[-1]


def load(path: pathlib.Path) -> dict:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as fh:
        try:
            return json.load(fh)
        except json.JSONDecodeError as e:
            raise SystemExit(f"{path}: not a JSON trace ({e})") from None


def union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[list[float]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def length(intervals) -> float:
    return sum(b - a for a, b in intervals)


def intersect(x, y) -> list[tuple[float, float]]:
    """Intersection of two sorted, disjoint interval lists."""
    out, i, j = [], 0, 0
    while i < len(x) and j < len(y):
        a, b = max(x[i][0], y[j][0]), min(x[i][1], y[j][1])
        if a < b:
            out.append((a, b))
        if x[i][1] < y[j][1]:
            i += 1
        else:
            j += 1
    return out


def classify(trace: dict) -> dict[str, list[tuple[float, float]]]:
    """{kernel, h2d, d2h, other_copy: [(start_s, end_s)]} of the events on the GPU streams."""
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    procs = {e["pid"]: e["args"].get("name", "") for e in events
             if e.get("ph") == "M" and e.get("name") == "process_name"}
    threads = {(e["pid"], e["tid"]): e["args"].get("name", "") for e in events
               if e.get("ph") == "M" and e.get("name") == "thread_name"}
    gpu = {pid for pid, name in procs.items() if re.search(r"gpu|cuda", name, re.I)}
    out: dict[str, list[tuple[float, float]]] = {"kernel": [], "h2d": [], "d2h": [], "other_copy": []}
    for e in events:
        if e.get("ph") != "X" or e.get("pid") not in gpu or "dur" not in e:
            continue
        stream = threads.get((e["pid"], e.get("tid")), "")
        if not re.search(r"stream", stream, re.I):  # per-op summary lines, not the streams' activity
            continue
        name = e.get("name", "")
        text = f"{name} {e.get('args', {}).get('memcpy_details', '')}"
        span = (e["ts"] * 1e-6, (e["ts"] + e["dur"]) * 1e-6)
        if _MEMCPY.search(name):
            kind = "h2d" if _H2D.search(text) else "d2h" if _D2H.search(text) else "other_copy"
        else:
            kind = "kernel"
        out[kind].append(span)
    return out


def summary(trace: dict) -> dict:
    raw = classify(trace)
    c = {k: union(v) for k, v in raw.items()}
    copies = union(c["h2d"] + c["d2h"])
    everything = union(copies + c["kernel"] + c["other_copy"])
    if not everything:
        raise SystemExit("the trace has no GPU stream activity (was it taken on a GPU, with CUPTI?)")
    under = length(intersect(copies, c["kernel"]))
    r = lambda x: round(x, 6)  # noqa: E731
    span = everything[-1][1] - everything[0][0]
    return {"span_s": r(span), "gpu_idle_s": r(span - length(everything)), "kernel_s": r(length(c["kernel"])),
            "h2d_s": r(length(c["h2d"])), "d2h_s": r(length(c["d2h"])), "copy_s": r(length(copies)),
            "copy_under_kernels_s": r(under), "copy_exposed_s": r(length(copies) - under),
            "both_directions_s": r(length(intersect(c["h2d"], c["d2h"]))),
            "events": {k: len(v) for k, v in raw.items()}}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit(__doc__)
    print(json.dumps(summary(load(find_trace(pathlib.Path(argv[0]))))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
