"""Multi-process start-up: `jax.distributed.initialize` before anything touches a device.

Order: explicit settings (flags of the entry point, else the environment) > cluster auto-detection (Slurm with more
than one task, Open MPI) > one process. Explicit settings:

  COSMOS_JAX_COORDINATOR=host:port   process 0's address, reachable from every process
  COSMOS_JAX_NUM_PROCESSES=N         processes in the job (usually one per node, each driving all of its GPUs)
  COSMOS_JAX_PROCESS_ID=i            this process, 0 .. N-1
  COSMOS_JAX_LOCAL_DEVICES=0,1,...   optional: GPUs of this process (one process per GPU)

Under Slurm (`srun`, one task per node or per GPU) JAX reads SLURM_* itself, so nothing is needed.
"""

from __future__ import annotations

import logging
import os

import jax

log = logging.getLogger(__name__)
ENV = ("COSMOS_JAX_COORDINATOR", "COSMOS_JAX_NUM_PROCESSES", "COSMOS_JAX_PROCESS_ID")


def _explicit(coordinator: str | None, num_processes: int | None, process_id: int | None):
    env = {k: os.environ.get(k) for k in ENV}
    coordinator = coordinator or env["COSMOS_JAX_COORDINATOR"]
    num = num_processes if num_processes is not None else env["COSMOS_JAX_NUM_PROCESSES"]
    pid = process_id if process_id is not None else env["COSMOS_JAX_PROCESS_ID"]
    given = [v is not None and v != "" for v in (coordinator, num, pid)]
    if any(given) and not all(given):
        raise ValueError("multi-process start: coordinator address, number of processes and process id must be given "
                         f"together (flags --coordinator_address/--num_processes/--process_id or {', '.join(ENV)}); "
                         f"got coordinator={coordinator!r}, num_processes={num!r}, process_id={pid!r}")
    if not any(given):
        return None
    try:
        num, pid = int(num), int(pid)
    except ValueError as e:
        raise ValueError(f"num_processes={num!r} and process_id={pid!r} must be integers") from e
    if not 0 <= pid < num:
        raise ValueError(f"process_id={pid} must be in [0, num_processes={num})")
    if ":" not in coordinator:
        raise ValueError(f"coordinator address {coordinator!r}: expected host:port")
    return coordinator, num, pid


def _cluster() -> bool:
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ:
        return True
    return int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1


def maybe_initialize(coordinator: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None) -> bool:
    """Start the multi-process runtime when asked or on a cluster; returns whether it did."""
    explicit = _explicit(coordinator, num_processes, process_id)
    local = os.environ.get("COSMOS_JAX_LOCAL_DEVICES")
    local_ids = [int(i) for i in local.split(",")] if local else None
    if explicit is not None:
        coordinator, num, pid = explicit
        jax.distributed.initialize(coordinator, num, pid, local_device_ids=local_ids)
    elif _cluster():
        jax.distributed.initialize(local_device_ids=local_ids)
    else:
        return False
    log.info("process %d of %d: %d local devices, %d in all", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())
    return True
