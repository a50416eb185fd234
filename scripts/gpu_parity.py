"""Mesh parity on real GPUs: train steps on 1 GPU vs 4-GPU meshes (each axis alone and combined), at the same
global batch, 3 steps from perturbed weights, in fp32 (XLA attention) and in bf16 (cuDNN attention, Ulysses around
it). JSON to bench/results/.

    python scripts/gpu_parity.py [--out bench/results]
"""

from __future__ import annotations

import datetime
import json
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests import test_parallel as tp  # noqa: E402

MESHES = {"data=4": (4, 1, 1), "fsdp=4": (1, 4, 1), "context=4": (1, 1, 4), "fsdp=2 context=2": (1, 2, 2),
          "data=2 context=2": (2, 1, 2)}


def main(out: str) -> None:
    result = {"name": "parity_meshes", "card": jax.devices()[0].device_kind, "num_devices": jax.device_count(),
              "date": datetime.date.today().isoformat(), "command": "python scripts/gpu_parity.py", "runs": {}}
    for dtype, impl in (("float32", "xla"), ("bfloat16", "cudnn")):
        # fp32 with full-precision matmuls (GPU default for fp32 is TF32, whose rounding would dominate)
        jax.config.update("jax_default_matmul_precision", "highest" if dtype == "float32" else None)
        ref_losses, ref_params = tp.run((1, 1, 1), dtype=dtype, attention_impl=impl)
        runs = {"1 device": {"losses": ref_losses}}
        for name, shape in MESHES.items():
            losses, params = tp.run(shape, dtype=dtype, attention_impl=impl)
            rel = max(abs(a - b) / abs(b) for a, b in zip(losses, ref_losses, strict=True))
            dp = max(float(np.max(np.abs(params[p] - a)) / (float(np.max(np.abs(a))) or 1.0))
                     for p, a in ref_params.items())
            runs[name] = {"losses": losses, "max_rel_loss_diff": rel, "max_rel_param_diff": dp}
            print(dtype, impl, name, losses, f"loss rel {rel:.2e} params rel {dp:.2e}", flush=True)
        result["runs"][f"{dtype}_{impl}"] = runs
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, f"parity_meshes_{result['card'].replace(' ', '-')}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print("wrote", path)


if __name__ == "__main__":
    main(sys.argv[sys.argv.index("--out") + 1] if "--out" in sys.argv else "bench/results")
