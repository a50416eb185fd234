"""The train step compiled for a GPU that is not here (XLA's deviceless ahead-of-time compile): its memory analysis,
its optimized HLO and where its host-memory copies run (scripts/hlo_host_copies.py), on a machine without a GPU.

    python scripts/aot_hlo.py --config=configs/waymo.py --target h200 --blocks 2 \\
        --config.offload='("opt_state","ema")' --config.offload_overlap=True --config.remat=full \\
        --dump step.hlo.txt.gz --thunks DIR   # DIR: XLA's dump; prints the loops' thunk order (thunk_order.py)

Needs JAX with its CUDA plugin (`pip install 'jax[cuda13]'`; no GPU, no driver). Without a device nothing can be
timed, so XLA's autotuning is off (`--xla_gpu_autotune_level=0`): the kernels it picks may differ from a compile on
the card, while the passes that place and schedule the host copies are the same. What it is for: seeing how XLA
runs the offloaded update's copies (async or on the compute stream, and what runs between their start and done)
while the lent GPUs are out of reach. An offloaded config compiles with the XLA flags the train command adds
(cosmos_jax.offload.keep_host_copies_async).
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from cosmos_jax import offload  # noqa: E402
from scripts import hlo_host_copies, thunk_order  # noqa: E402
from scripts.bench_train import build, memory_stats_gib  # noqa: E402

# What XLA reads of the card (xla/stream_executor/device_description.proto). Public figures: 132 SMs at 1.98 GHz
# boost, 50 MiB L2; H100 SXM 3.35 TB/s and 80 GB, H200 4.8 TB/s and 141 GB (the memory sizes as each card reports
# them to JAX, about 79.1 and 139.8 GiB).
_SM90 = """gpu_device_info {{
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: 233472 threads_per_core_limit: 2048 core_count: 132 fpus_per_core: 128
  block_dim_limit_x: 2147483647 block_dim_limit_y: 65535 block_dim_limit_z: 65535
  memory_bandwidth: {bandwidth} l2_cache_size: 52428800 clock_rate_ghz: 1.98
  device_memory_size: {memory} shared_memory_per_block_optin: 232448
  cuda_compute_capability {{ major: 9 }} registers_per_core_limit: 65536 registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 10 }}
runtime_version {{ major: 13 minor: 0 }}
device_description_str: "{name}"
"""
TARGETS = {
    "h100": _SM90.format(bandwidth=3_350_000_000_000, memory=84_929_347_584, name="NVIDIA H100 80GB HBM3"),
    "h200": _SM90.format(bandwidth=4_800_000_000_000, memory=150_110_011_392, name="NVIDIA H200"),
}


def topology_devices(target: str, count: int = 1):
    """Compile-only devices of `count` GPUs of kind `target` on one host."""
    from jax.experimental import topologies

    if target not in TARGETS:
        raise ValueError(f"--target={target!r}: expected one of {sorted(TARGETS)}")
    topo = topologies.get_topology_desc(platform="cuda", target_config=TARGETS[target], topology=f"1x1x{count}")
    return list(topo.devices)


def compile_for(lowered, devices):
    """The executable of `lowered` (traced and lowered on this machine's CPU devices, for the cuda platform)
    compiled by the GPU target's compile-only client. Lowering on the CPU keeps the host memory kinds (the
    compile-only devices have no memories, so JAX drops a sharding's `pinned_host` on them)."""
    import numpy as np
    from jax._src import compiler
    from jax._src.lib import _jax

    assignment = np.asarray(devices, dtype=object).reshape(1, len(devices))  # one replica, a partition per device
    options = compiler.get_compile_options(num_replicas=1, num_partitions=len(devices), device_assignment=assignment)
    return devices[0].client.compile(lowered.compiler_ir("stablehlo"),
                                     executable_devices=_jax.DeviceList(tuple(devices)), compile_options=options)


def deviceless_env(devices: int = 1) -> None:
    """Before JAX starts its backends: trace on `devices` CPU devices, look for no GPU, skip the CUDA plugin's
    driver checks, time no kernel."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
    os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_gpu_autotune_level=0"
                               f" --xla_force_host_platform_device_count={devices}").strip()


def lower(config, devices: int = 1):
    """(the train step lowered for the cuda platform on this machine's first `devices` CPU devices, info)."""
    if config.model.attention_impl == "auto":  # what 'auto' picks on a GPU (cuDNN); this process runs on the CPU
        config.model.attention_impl = "cudnn"
    from cosmos_jax import sharding

    mesh, step, state, data, info = build(config, jax.devices("cpu")[:devices], compile_only=True)
    with sharding.activate(mesh):
        key = jax.eval_shape(lambda: jax.random.key(0))
        return step.trace(state, data, key).lower(lowering_platforms=("cuda",)), info


def main(argv):
    del argv
    f = flags.FLAGS
    config = f.config
    # the XLA flags an offloaded run of train / bench_train compiles with (cosmos_jax.offload.prepare_backend)
    if flag := offload.keep_host_copies_async(tuple(config.get("offload") or ())):
        print(f"XLA_FLAGS += {flag}", file=sys.stderr)
    if f.thunks:  # XLA writes the step's thunk sequence there as it compiles
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_dump_to={f.thunks}"
                                   " --xla_dump_hlo_module_re=jit_train_step").strip()
    deviceless_env(f.devices)
    if f.blocks:
        config.model.num_blocks = f.blocks
    lowered, info = lower(config, f.devices)
    executable = compile_for(lowered, topology_devices(f.target, f.devices))
    hlo = "\n\n".join(m.to_string() for m in executable.hlo_modules())
    memory = memory_stats_gib(executable.get_compiled_memory_stats())  # per device
    print(json.dumps({"target": f.target, "blocks": info["cfg"].num_blocks, **memory}))
    if f.dump:
        with (gzip.open(f.dump, "wt") if f.dump.endswith(".gz") else open(f.dump, "w")) as fh:
            fh.write(hlo)
    print(hlo_host_copies.summary(hlo))
    if f.thunks:
        found = sorted(glob.glob(os.path.join(f.thunks, "*jit_train_step*.thunk_sequence_after_thunk_passes.txt")))
        if not found:
            raise FileNotFoundError(f"--thunks={f.thunks}: XLA wrote no *jit_train_step*.thunk_sequence_after_thunk_"
                                    "passes.txt there")
        thunk_order.main(["thunk_order.py", found[-1]])


if __name__ == "__main__":
    config_flags.DEFINE_config_file("config", "configs/waymo.py", "experiment config", lock_config=False)
    flags.DEFINE_string("target", "h200", f"the GPU compiled for: {', '.join(sorted(TARGETS))}")
    flags.DEFINE_integer("devices", 1, "GPUs of one host (the config's mesh over them)")
    flags.DEFINE_integer("blocks", 0, "a K-block slice (0 = the config's)")
    flags.DEFINE_string("dump", "", "write the optimized HLO here (.gz: gzip text)")
    flags.DEFINE_string("thunks", "", "dump XLA's files into this folder and print the loops' thunk order "
                        "(scripts/thunk_order.py)")
    app.run(main)
