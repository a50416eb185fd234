"""Peak host memory of the streaming `.pt` export (cosmos_jax/weights/export.py) at the 7B width, 2, 4 and 8 blocks.

`python scripts/bench_export_memory.py [--blocks 2,4,8] [--modes full,lora] [--work /tmp/...]`: for each block
count and mode, in a fresh process, builds only what the export reads (random values, configs/waymo.py with
model.num_blocks changed) on the default device:
- full: params fp32 + EMA fp32 + the 3 buffers (no optimizer state);
- lora: the bf16 base in `buffers` + rank-16 adapters (to_q, to_k, to_v, to_out, layer1, layer2) and their EMA;
then reads the resident memory just before `export_pt` and its peak during it (VmHWM, reset through
/proc/self/clear_refs; where that is refused, RSS sampled every 5 ms). On the CPU backend the state itself lives in
host memory, so `growth_gb` (peak - before) is what the export adds. Streaming means the growth does not scale
with the model: `growth_per_model_gb` = (growth at the most blocks - at the fewest) / (model size at the most -
at the fewest), target <= 0.3. Each export is deleted after measuring. Cases with 8 blocks or more are heavy
(~18 GB for full): /tmp/HEAVY_BENCH_RUNNING exists while they run. Result: bench/results/export_memory_<date>.json.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from scripts.bench_common import write_result  # noqa: E402

flags.DEFINE_string("blocks", "2,4,8", "block counts")
flags.DEFINE_string("modes", "full,lora", "full and/or lora")
flags.DEFINE_string("work", "/tmp/cosmos_jax_bench_export", "scratch folder for the exports (deleted after each)")
flags.DEFINE_string("tag", "", "suffix of the result's file name (e.g. h200)")
flags.DEFINE_integer("heavy_blocks", 8, "cases with at least this many blocks mark /tmp/HEAVY_BENCH_RUNNING")
F = flags.FLAGS
HEAVY_MARKER = "/tmp/HEAVY_BENCH_RUNNING"

CHILD = r"""
import json, os, sys, threading, time
mode, n, work = sys.argv[1], int(sys.argv[2]), sys.argv[3]
import jax, jax.numpy as jnp, numpy as np
from configs import waymo
from cosmos_jax import lora, optim, sharding
from cosmos_jax import train_state as ts
from cosmos_jax.models import build
from cosmos_jax.weights import export, tree

GB = 1e9
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
c = waymo.get_config()
c.model.num_blocks = n
if mode == "lora":
    c.lora.rank, c.lora.alpha = 16, 16.0
    c.lora.targets = ("to_q", "to_k", "to_v", "to_out", "layer1", "layer2")
cfg = build.dit_config(c)
mesh = sharding.one_device_mesh()
_, abstract, shardings = ts.layout(cfg, optim.make(c), mesh)
fills = {}
def fill(a, sh, seed):  # one leaf at a time, so that building the state needs no more than the state
    key = (a.shape, str(a.dtype))
    if key not in fills:
        fills[key] = jax.jit(lambda k, s=a.shape, d=a.dtype: (jax.random.normal(k, s, jnp.float32) * 0.02).astype(d),
                             out_shardings=sh)
    return fills[key](jax.random.key(seed))
state = {}
seed = 0
for top in ("params", "buffers", "ema"):
    flat, sh = tree.flat(abstract[top]), tree.flat(shardings[top])
    out = {}
    for p, a in flat.items():
        out[p] = fill(a, sh[p], seed)
        seed += 1
        out[p].block_until_ready()
    state[top] = tree.unflat(out)
model_bytes = sum(a.nbytes for a in jax.tree.leaves(state))
scale = lora.scale(cfg.lora_rank, cfg.lora_alpha)
out_dir = os.path.join(work, f"{mode}_{n}")
before = status("VmRSS")
peak = {"v": before}
try:
    open("/proc/self/clear_refs", "w").write("5")
    sampler = None
except OSError:
    stop = threading.Event()
    def sample():
        while not stop.is_set():
            peak["v"] = max(peak["v"], status("VmRSS"))
            time.sleep(0.005)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
t = time.time()
paths = export.export_pt(state, n, out_dir, 1, lora_scale=scale)
secs = time.time() - t
if sampler is None:
    peak["v"] = status("VmHWM")
else:
    stop.set(); sampler.join()
    peak["v"] = max(peak["v"], status("VmRSS"))
file_bytes = sum(os.path.getsize(p) for p in paths)
assert file_bytes <= export.pt_export_nbytes(abstract, n)
print(json.dumps({"blocks": n, "mode": mode, "model_gb": round(model_bytes / GB, 3),
                  "rss_before_gb": round(before / GB, 3), "peak_gb": round(peak["v"] / GB, 3),
                  "growth_gb": round((peak["v"] - before) / GB, 3), "export_s": round(secs, 1),
                  "file_gb": round(file_bytes / GB, 3), "peak_method": "VmHWM" if sampler is None else "5ms RSS",
                  "device": str(jax.devices()[0].platform)}))
"""


def run_case(mode: str, n: int) -> dict:
    out_dir = os.path.join(F.work, f"{mode}_{n}")
    try:
        p = subprocess.run([sys.executable, "-c", CHILD, mode, str(n), F.work], capture_output=True, text=True)
        if p.returncode:
            raise RuntimeError(f"{mode} {n} blocks failed:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
        return json.loads(p.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def main(argv):
    del argv
    os.makedirs(F.work, exist_ok=True)
    blocks = sorted(int(b) for b in F.blocks.split(","))
    modes = [m for m in F.modes.split(",") if m]
    rows = []
    for n in blocks:
        heavy = n >= F.heavy_blocks
        if heavy:
            open(HEAVY_MARKER, "w").write(f"{os.getpid()} scripts/bench_export_memory.py {n} blocks\n")
        try:
            for mode in modes:
                t = time.time()
                rows.append({**run_case(mode, n), "wall_s": round(time.time() - t, 1)})
                print(rows[-1], flush=True)
        finally:
            if heavy and os.path.exists(HEAVY_MARKER):
                os.remove(HEAVY_MARKER)
    overall = {}
    for mode in modes:
        r = sorted((x for x in rows if x["mode"] == mode), key=lambda x: x["blocks"])
        if len(r) >= 2:
            d_model = r[-1]["model_gb"] - r[0]["model_gb"]
            d_growth = r[-1]["growth_gb"] - r[0]["growth_gb"]
            overall[mode] = {"blocks": [r[0]["blocks"], r[-1]["blocks"]], "growth_increase_gb": round(d_growth, 3),
                             "model_increase_gb": round(d_model, 3),
                             "growth_per_model_gb": round(d_growth / d_model, 4), "target": 0.3,
                             "ok": d_growth / d_model <= 0.3}
    print(json.dumps(overall, indent=2))
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    result = {"name": "export_memory", "date": datetime.date.today().isoformat(),
              "machine": f"{os.cpu_count()} cores, {ram:.0f} GiB", "command": " ".join(["python", *sys.argv]),
              "rows": rows, "overall": overall}
    tag = f"_{F.tag}" if F.tag else ""
    path = write_result(result, "bench/results", f"export_memory_{result['date']}{tag}.json")
    print(f"wrote {path}")


if __name__ == "__main__":
    app.run(main)
