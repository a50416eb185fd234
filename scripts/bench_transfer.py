"""Host <-> device copy rate for pinned host memory (what `config.offload` streams), JSON to bench/results/.

    python scripts/bench_transfer.py [--gib 2] [--reps 5] [--out bench/results]

Times, on the first device, with an fp32 array of --gib GiB: host->device and device->host copies inside jit
(`jax.device_put` to a memory space, as cosmos_jax/offload.py does), both directions at once (two arrays), and the
same in 8 chunks of a loop (the per-block shape of the offloaded update). GB/s = bytes moved / median time.

Then the loop of cosmos_jax/offload_overlap.py piece by piece, to find what makes it slow where it is: 8 blocks of
three host buffers (Adam's mu, nu and the EMA, --gib each), each block brought to the device, updated with a
device-resident gradient, written back in place; without and with the next block fetched one iteration ahead, with
a chain of matmuls per block (the blocks' compute, also timed alone), and the same inside a `jax.custom_vjp` under
`jax.value_and_grad` (as the train step runs it); and the loop unrolled in Python (static block indices), on the
stacked buffers and on one host array per block; and the buffers split by block parity (two blocks an iteration:
each block's write-back and the next block's read hit different buffers). HLO_DIR=DIR writes each variant's
compiled HLO there.
"""

from __future__ import annotations

import datetime
import functools
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from scripts.bench_common import timed, write_result  # noqa: E402

flags.DEFINE_float("gib", 2.0, "size of each array, GiB")
flags.DEFINE_integer("reps", 5, "timed repetitions (median)")
flags.DEFINE_string("out", "bench/results", "directory for the JSON")
F = flags.FLAGS
# matmuls per block: ~30 ms on an H100, about the time 3 x --gib/8 GiB take each way at 52 GB/s (--gib 2), so that
# an overlapped loop shows as ~max(compute, copies) and a serial one as their sum
COMPUTE_REPS = 64 if os.environ.get("JAX_PLATFORMS") != "cpu" else 1
HLO_DIR = os.environ.get("HLO_DIR")  # where to write the compiled HLO of the loop variants with compute, if set


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
    t_chunk = _timed_donated(lambda bs: [chunked(bs[0])], [a_host], 1, F.reps)
    loops = loop_patterns(dev, n, F.reps)
    result = {
        "name": "host_device_transfer", "date": datetime.date.today().isoformat(), "card": dev.device_kind,
        "jax": jax.__version__, "gib": F.gib,
        "h2d_gb_s": round(gb / t_h2d, 2), "d2h_gb_s": round(gb / t_d2h, 2),
        "both_directions_gb_s": round(2 * gb / t_both, 2), "chunked_roundtrip_gb_s": round(2 * gb / t_chunk, 2),
        "times_s": {"h2d": t_h2d, "d2h": t_d2h, "both": t_both, "chunked": t_chunk},
        "update_loop_s": loops,
    }
    print(result, flush=True)
    write_result(result, F.out, f"transfer_{dev.device_kind.replace(' ', '-')}.json")
    failed = [k for k, v in loops.items() if isinstance(v, str)]
    if failed:
        sys.exit(f"loop variants that failed: {', '.join(failed)} (their errors are in the JSON)")


def loop_patterns(dev, n, reps, blocks=8):
    """Seconds per call of the offloaded-update loop's variants (module docstring)."""
    on_dev = jax.sharding.SingleDeviceSharding(dev, memory_kind="device")
    on_host = jax.sharding.SingleDeviceSharding(dev, memory_kind="pinned_host")
    dev_space, host_space = jax.memory.Space.Device, jax.memory.Space.Host
    shape = (blocks, n // blocks)
    bufs = [jax.device_put(jnp.full(shape, float(k), jnp.float32), on_host) for k in range(3)]
    grads = jax.device_put(jnp.ones(shape, jnp.float32), on_dev)
    w = jax.device_put(jnp.eye(4096, dtype=jnp.bfloat16) * 0.5, on_dev)
    y0 = jax.device_put(jnp.ones((8192, 4096), jnp.bfloat16), on_dev)

    def take(b, i):
        return jax.lax.dynamic_index_in_dim(b, i, keepdims=False)

    def fetch(bs, i):
        return [jax.device_put(take(b, i), dev_space) for b in bs]

    def updated(blk, g, i):  # block i's moments and EMA after a stand-in update
        return [b * 0.9 + take(g, i) * 0.1 for b in blk]

    def write_back(bs, new, i):  # block i's new values into the stacked host buffers, in place
        return [jax.lax.dynamic_update_index_in_dim(b, jax.device_put(v, host_space), i, 0)
                for b, v in zip(bs, new, strict=True)]

    def compute(y):  # COMPUTE_REPS x 0.27 TFLOP of matmuls
        return jax.lax.fori_loop(0, COMPUTE_REPS, lambda _, y: (y @ w).astype(jnp.bfloat16), y)

    def update_loop(bs, g, y, nbuf, prefetch, with_compute):
        """prefetch: "" (block i fetched in iteration i), "before" (block i + 1 read before block i is written
        back: the read and the in-place write of one buffer in no set order), "after" (read from the buffer as
        written: an order XLA can keep in place), "after2" (block i + 2 read after block i is written: two blocks
        of compute to hide each write + read)."""
        def body(i, carry):
            bs, cur, y = carry
            if prefetch == "after2":  # two blocks on the device: the copies of block i + 2 have two blocks' time
                cur, ahead = cur
            nxt = fetch(bs, jnp.minimum(i + 1, blocks - 1)) if prefetch == "before" else cur
            blk = cur if prefetch else fetch(bs, i)
            bs = write_back(bs, updated(blk, g, i), i)
            if prefetch == "after":
                nxt = fetch(bs, jnp.minimum(i + 1, blocks - 1))
            if prefetch == "after2":
                nxt = (ahead, fetch(bs, jnp.minimum(i + 2, blocks - 1)))
            return bs, nxt, compute(y) if with_compute else y
        first = fetch(bs[:nbuf], 0)
        if prefetch == "after2":
            first = (first, fetch(bs[:nbuf], 1))
        bs, _, y = jax.lax.fori_loop(0, blocks, body, (bs[:nbuf], first, y))
        return bs, y

    out = {}
    for name, nbuf, prefetch, with_compute in (("1buf", 1, "", False), ("3buf", 3, "", False),
                                               ("3buf_prefetch_before", 3, "before", False),
                                               ("3buf_prefetch_after", 3, "after", False),
                                               ("3buf_compute", 3, "", True),
                                               ("3buf_prefetch_after_compute", 3, "after", True),
                                               ("3buf_prefetch_before_compute", 3, "before", True),
                                               ("3buf_prefetch2_compute", 3, "after2", True)):
        f = jax.jit(functools.partial(update_loop, nbuf=nbuf, prefetch=prefetch, with_compute=with_compute),
                    donate_argnums=0, out_shardings=([on_host] * nbuf, on_dev))
        _variant(out, name, f, bufs[:nbuf], nbuf, grads, y0, reps)

    def unrolled_loop(bs, g, y, separate):
        """The loop unrolled in Python: static block indices. `separate`: each block's moments a host array of
        its own (3 x blocks arrays) instead of a slice of a stacked buffer; block i + 1 fetched before block i's
        write-back (no aliasing between different arrays)."""
        get = (lambda k, i: bs[k * blocks + i]) if separate else (lambda k, i: bs[k][i])
        cur = [jax.device_put(get(k, 0), dev_space) for k in range(3)]
        outs = list(bs)
        for i in range(blocks):
            nxt = [jax.device_put(get(k, i + 1), dev_space) for k in range(3)] if i + 1 < blocks else None
            new = [jax.device_put(c * 0.9 + g[i] * 0.1, host_space) for c in cur]
            for k in range(3):
                if separate:
                    outs[k * blocks + i] = new[k]
                else:
                    outs[k] = outs[k].at[i].set(new[k])
            y = compute(y)
            cur = nxt
        return outs, y

    for name, separate in (("3buf_unrolled_compute", False), ("3buf_separate_unrolled_compute", True)):
        ins = [b[i] for b in bufs for i in range(blocks)] if separate else bufs
        ins = [jax.device_put(a, on_host) for a in ins]
        f = jax.jit(functools.partial(unrolled_loop, separate=separate), donate_argnums=0,
                    out_shardings=([on_host] * len(ins), on_dev))
        _variant(out, name, f, ins, len(ins), grads, y0, reps)

    def parity_loop(bs, g, y):
        """The stacked buffers split by block parity (even blocks' 3 buffers, then odd blocks'), two blocks an
        iteration: block 2j is written into the even buffers while block 2j + 1 is read from the odd ones, and the
        other way round in the second half, so no read waits for a write into the same buffer; barriers keep each
        read's result after the compute it should run beside."""
        even, odd = bs[:3], bs[3:]

        def body(j, carry):
            even, odd, cur, y = carry
            nxt = fetch(odd, j)  # block 2j + 1, while block 2j computes
            even = write_back(even, updated(cur, g, 2 * j), j)
            y = compute(y)
            cur, y = jax.lax.optimization_barrier((nxt, y))
            nxt = fetch(even, jnp.minimum(j + 1, blocks // 2 - 1))  # block 2j + 2, while block 2j + 1 computes
            odd = write_back(odd, updated(cur, g, 2 * j + 1), j)
            y = compute(y)
            nxt, y = jax.lax.optimization_barrier((nxt, y))
            return even, odd, nxt, y
        even, odd, _, y = jax.lax.fori_loop(0, blocks // 2, body, (even, odd, fetch(even, 0), y))
        return [*even, *odd], y

    halves = [jax.device_put(jnp.full((blocks // 2, n // blocks), float(k), jnp.float32), on_host)
              for _ in (0, 1) for k in range(3)]
    f = jax.jit(parity_loop, donate_argnums=0, out_shardings=([on_host] * 6, on_dev))
    _variant(out, "3buf_parity_compute", f, halves, 6, grads, y0, reps)
    c = jax.jit(compute)
    out["compute_alone"] = timed(c, y0, reps=reps)

    @jax.custom_vjp
    def stream(y, bs):
        return update_loop(bs, grads, y, 3, "after", True)

    def fwd(y, bs):
        return stream(y, bs), None

    def bwd(_, cts):
        return cts[1], None
    stream.defvjp(fwd, bwd)

    def loss(y, bs):
        new_bs, y = stream(y, bs)
        return jnp.sum(y.astype(jnp.float32)), new_bs
    g = jax.jit(jax.value_and_grad(loss, has_aux=True), donate_argnums=1,
                out_shardings=((None, [on_host] * 3), on_dev))
    out["custom_vjp_under_grad"] = _timed_donated(lambda bs: g(y0, bs)[0][1], bufs, 3, reps)
    print("custom_vjp_under_grad", out["custom_vjp_under_grad"], flush=True)
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


def _variant(out, name, f, bufs, nbuf, grads, y0, reps):
    """Time one loop variant into out[name]; a variant XLA rejects (e.g. host-memory slices it cannot place) is
    recorded as its error and printed, and the others still run (main exits non-zero at the end)."""
    try:
        _dump_hlo(name, f, bufs, grads, y0)
        out[name] = _timed_donated(lambda bs: f(bs, grads, y0), bufs, nbuf, reps)
    except Exception as e:  # noqa: BLE001 - recorded in the result and reported, not swallowed
        out[name] = f"error: {type(e).__name__}: {str(e)[:300]}"
        print(f"{name} failed: {out[name]}", file=sys.stderr, flush=True)
    print(name, out[name], flush=True)


def _dump_hlo(name, f, *args):
    if HLO_DIR and "compute" in name:  # the variants with the blocks' compute: the schedule is what matters
        os.makedirs(HLO_DIR, exist_ok=True)
        with open(os.path.join(HLO_DIR, f"{name}.hlo.txt"), "w") as fh:
            fh.write(f.lower(*args).compile().as_text())


def _timed_donated(fn, bufs, nbuf, reps):
    """Median seconds of fn(bufs) -> (new bufs, ...), the buffers donated and passed on (in place)."""
    bs = [jnp.copy(b) for b in bufs[:nbuf]]  # keep `bufs` for the next pattern
    times = []
    for k in range(reps + 1):
        t = time.perf_counter()
        out = fn(bs)
        bs = out[0] if isinstance(out, tuple) else out
        jax.block_until_ready(bs)
        if k:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


if __name__ == "__main__":
    app.run(main)
