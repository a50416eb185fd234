"""Full fine-tune of the 7B on ONE GPU (141 GB, e.g. an H200): the seed's experiment with the Adam moments and the
EMA in pinned host memory, streamed through the update one block at a time (cosmos_jax/offload.py).

  python -m cosmos_jax.train --config=configs/waymo_1gpu.py          (t2w)
  python -m cosmos_jax.train --config=configs/waymo_1gpu.py:v2w

Memory: the device holds the fp32 params (27 GiB), the gradients (27 GiB) and the step's activations; the host holds
54 GiB of moments and 27 GiB of EMA (pinned), so the machine needs about 128 GiB of RAM. Checkpoints are written
synchronously (an asynchronous save would first copy the device-resident params to host memory as well) with Orbax
reading 4 GB at a time; each one takes about 108 GB of disk (fp32 params, moments and EMA).
"""

from __future__ import annotations

from configs import waymo


def get_config(arg: str | None = None):
    c = waymo.get_config(arg)
    c.job.name += "_1gpu"
    c.mesh = (("data", 1), ("fsdp", 1), ("context", 1))
    c.offload = ("opt_state", "ema")
    c.checkpoint.async_save = False
    c.checkpoint.concurrent_gb = 4
    c.checkpoint.max_to_keep = 2
    return c
