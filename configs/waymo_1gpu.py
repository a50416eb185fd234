"""Full fine-tune of the 7B on ONE GPU (141 GB, e.g. an H200): the seed's experiment with the Adam moments and the
EMA in pinned host memory, streamed through the update one block at a time (cosmos_jax/offload.py), each step's
update applied block by block in the next step's forward pass so that the copies overlap the compute
(cosmos_jax/offload_overlap.py).

  python -m cosmos_jax.train --config=configs/waymo_1gpu.py          (t2w)
  python -m cosmos_jax.train --config=configs/waymo_1gpu.py:v2w

Memory: the device holds the fp32 params (27 GiB), the gradients (27 GiB, kept between steps as the pending update)
and the step's activations; the host holds 54 GiB of moments and 27 GiB of EMA (pinned), so the machine needs about
128 GiB of RAM. Checkpoints are written synchronously (an asynchronous save would first copy the device-resident
params to host memory as well) with Orbax reading 4 GB at a time; each one takes about 108 GB of disk (fp32 params,
moments and EMA).
"""

from __future__ import annotations

from configs import waymo


def get_config(arg: str | None = None):
    c = waymo.get_config(arg)
    c.job.name += "_1gpu"
    c.mesh = (("data", 1), ("fsdp", 1), ("context", 1))
    c.offload = ("opt_state", "ema")
    c.offload_overlap = True  # the copies run during the next step's forward pass (cosmos_jax/offload_overlap.py)
    # Each block's own moments and EMA read at the top of its iteration, its write-backs under its compute: the
    # fastest order measured on the 6-block slice (one H100, 2026-12-07: +9.9 % over no offload, against +11.8 %
    # with offload_midblock_fetch); 6.4 GiB more temporaries than prefetch 1 for the 7B (scripts/aot_hlo.py).
    c.offload_prefetch = 0
    c.remat = "full"  # what the overlapped blocks do; also the final layer's
    c.checkpoint.async_save = False
    c.checkpoint.concurrent_gb = 4
    c.checkpoint.max_to_keep = 2
    return c
