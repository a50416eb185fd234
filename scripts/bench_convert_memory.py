"""Peak memory of the DiT conversion (cosmos_jax/weights/dit.py) on synthetic `.pt` files of 2, 4 and 8 blocks.

`python scripts/bench_convert_memory.py [--blocks 2,4,8] [--dtype bfloat16] [--work /tmp/...]`: writes random
state dicts with the 7B network's keys and shapes (num_blocks changed), converts each in a fresh process and reads
its peak resident memory (VmHWM). Result: bench/results/convert_memory_<date>.json.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from scripts.bench_common import write_result  # noqa: E402

flags.DEFINE_string("blocks", "2,4,8", "block counts")
flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "dtype of the synthetic checkpoints")
flags.DEFINE_string("work", "/tmp/cosmos_jax_bench_convert", "scratch folder (needs ~2 bytes x 2.3 G values)")
F = flags.FLAGS

CONVERT = """
import sys
from configs import waymo
from cosmos_jax.weights import dit
c = waymo.get_config(); c.model.num_blocks = int(sys.argv[3])
s = dit.convert(sys.argv[1], sys.argv[2], c, overwrite=True)
print(s["peak_rss_mb"], s["seconds"])
"""


def main(argv):
    del argv
    import torch

    from configs import waymo
    from cosmos_jax.weights import dit, keymap

    os.makedirs(F.work, exist_ok=True)
    dtype = getattr(torch, F.dtype)
    rows = []
    for n in [int(b) for b in F.blocks.split(",")]:
        c = waymo.get_config()
        c.model.num_blocks = n
        table = keymap.torch_table(*dit.config_shapes(c))
        src = os.path.join(F.work, f"dit_{n}blocks.pt")
        if not os.path.exists(src):
            torch.save({k: torch.randn(s, dtype=dtype) for k, s in table}, src)
        largest = max(int(torch.Size(s).numel()) for _, s in table) * dtype.itemsize / 2**20
        t = time.time()
        out = subprocess.run([sys.executable, "-c", CONVERT, src, os.path.join(F.work, f"orbax_{n}"), str(n)],
                             capture_output=True, text=True, check=True)
        peak, secs = map(float, out.stdout.strip().splitlines()[-1].split())
        rows.append({"blocks": n, "file_mb": round(os.path.getsize(src) / 2**20, 1), "peak_rss_mb": peak,
                     "largest_tensor_mb": round(largest, 1), "convert_s": secs, "wall_s": round(time.time() - t, 1)})
        print(rows[-1], flush=True)
    result = {"name": "convert_memory", "date": datetime.date.today().isoformat(), "dtype": F.dtype,
              "machine": f"{os.cpu_count()} cores", "command": " ".join(["python", *sys.argv]), "rows": rows}
    path = write_result(result, "bench/results", f"convert_memory_{result['date']}.json")
    print(f"wrote {path}")


if __name__ == "__main__":
    app.run(main)
