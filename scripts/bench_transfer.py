"""Host <-> device copy rate for pinned host memory (what `config.offload` streams), JSON to bench/results/.

    python scripts/bench_transfer.py [--gib 2] [--reps 5] [--out bench/results]

Times, on the first device, with an fp32 array of --gib GiB: host->device and device->host copies inside jit
(`jax.device_put` to a memory space, as cosmos_jax/offload.py does), both directions at once (two arrays), and the
same in 8 chunks of a scanned loop (the per-block shape of the offloaded update). GB/s = bytes moved / median time.
"""

from __future__ import annotations

import datetime
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from scripts.bench_common import write_result  # noqa: E402

flags.DEFINE_float("gib", 2.0, "size of each array, GiB")
flags.DEFINE_integer("reps", 5, "timed repetitions (median)")
flags.DEFINE_string("out", "bench/results", "directory for the JSON")
F = flags.FLAGS


def timed(fn, *args, reps):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv):
    del argv
    dev = jax.devices()[0]
    n = int(F.gib * 2**30 // 4)
    on_dev = jax.sharding.SingleDeviceSharding(dev, memory_kind="device")
    on_host = jax.sharding.SingleDeviceSharding(dev, memory_kind="pinned_host")
    a_dev = jax.device_put(jnp.ones((8, n // 8), jnp.float32), on_dev)
    a_host = jax.device_put(jnp.ones((8, n // 8), jnp.float32), on_host)
    dev_space, host_space = jax.memory.Space.Device, jax.memory.Space.Host
    h2d = jax.jit(lambda h: jax.device_put(h, dev_space) + 1.0, out_shardings=on_dev)
    d2h = jax.jit(lambda d: jax.device_put(d * 2.0, host_space), out_shardings=on_host)

    def both_fn(h, d):
        return jax.device_put(h, dev_space) + 1.0, jax.device_put(d * 2.0, host_space)
    both = jax.jit(both_fn, out_shardings=(on_dev, on_host))

    def chunked_fn(h):  # row i to the device, updated, back into the host buffer in place
        def body(i, buf):
            row = jax.device_put(jax.lax.dynamic_index_in_dim(buf, i, keepdims=True), dev_space) * 2.0
            return jax.lax.dynamic_update_index_in_dim(buf, jax.device_put(row, host_space), i, 0)
        return jax.lax.fori_loop(0, 8, body, h)
    chunked = jax.jit(chunked_fn, out_shardings=on_host, donate_argnums=0)

    gb = n * 4 / 1e9
    t_h2d = timed(h2d, a_host, reps=F.reps)
    t_d2h = timed(d2h, a_dev, reps=F.reps)
    t_both = timed(both, a_host, a_dev, reps=F.reps)
    buf = a_host
    jax.block_until_ready(buf := chunked(buf))
    times = []
    for _ in range(F.reps):
        t = time.perf_counter()
        jax.block_until_ready(buf := chunked(buf))
        times.append(time.perf_counter() - t)
    t_chunk = statistics.median(times)
    result = {
        "name": "host_device_transfer", "date": datetime.date.today().isoformat(), "card": dev.device_kind,
        "jax": jax.__version__, "gib": F.gib,
        "h2d_gb_s": round(gb / t_h2d, 2), "d2h_gb_s": round(gb / t_d2h, 2),
        "both_directions_gb_s": round(2 * gb / t_both, 2), "chunked_roundtrip_gb_s": round(2 * gb / t_chunk, 2),
        "times_s": {"h2d": t_h2d, "d2h": t_d2h, "both": t_both, "chunked": t_chunk},
    }
    print(result, flush=True)
    write_result(result, F.out, f"transfer_{dev.device_kind.replace(' ', '-')}.json")


if __name__ == "__main__":
    app.run(main)
