"""The only module that knows the mesh: axis names, logical-axis rules, and NamedShardings.

Model code names logical axes (see cosmos_jax/models/layers.py); these rules map them onto the mesh axes
`data`, `fsdp` and `context`. The mesh uses `AxisType.Auto` on purpose: since JAX 0.9 `jax.make_mesh` defaults to
Explicit axes, under which sharding-in-types rejects the implicit resharding our logical rules rely on (e.g.
plain indexing of a sequence-sharded array); with Auto axes XLA propagates shardings from the annotations.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh

MESH_AXES = ("data", "fsdp", "context")

# logical name -> mesh axes. Parameters shard their width over (fsdp, context): context devices hold shards too.
LOGICAL_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("layers", None),
    ("embed", ("fsdp", "context")),
    ("mlp", None),
    ("heads", None),
    ("kv_embed", None),
    ("adaln", None),
    ("adaln_out", None),
    ("norm", None),
    ("patch", None),
    ("table", None),
)


def resolve_mesh_shape(mesh_spec: Sequence[Sequence], num_devices: int) -> tuple[tuple[str, int], ...]:
    """Fill the one -1 size with the remaining devices; check names, order-independence and the product."""
    names = [str(n) for n, _ in mesh_spec]
    sizes = [int(s) for _, s in mesh_spec]
    if sorted(names) != sorted(MESH_AXES):
        raise ValueError(f"config.mesh names {names}: expected each of {MESH_AXES} exactly once")
    if sizes.count(-1) > 1:
        raise ValueError(f"config.mesh {tuple(mesh_spec)}: at most one size may be -1")
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"config.mesh {tuple(mesh_spec)}: sizes must be positive or -1")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if num_devices % known:
            raise ValueError(f"config.mesh {tuple(mesh_spec)}: {num_devices} devices are not divisible by {known}")
        sizes[sizes.index(-1)] = num_devices // known
    if int(np.prod(sizes)) != num_devices:
        raise ValueError(f"config.mesh {tuple(mesh_spec)} needs {int(np.prod(sizes))} devices, {num_devices} present")
    return tuple(zip(names, sizes, strict=True))


def make_mesh(mesh_spec: Sequence[Sequence], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A Mesh over all (or the given) devices with Auto axis types, axes in the config's order."""
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(mesh_spec, len(devices))
    names = tuple(n for n, _ in shape)
    sizes = tuple(s for _, s in shape)
    return jax.make_mesh(sizes, names, axis_types=(AxisType.Auto,) * len(names), devices=devices)


@contextlib.contextmanager
def activate(mesh: Mesh):
    """Set the mesh and the logical rules: build models, states and steps inside this."""
    with jax.set_mesh(mesh), nnx.logical_axis_rules(LOGICAL_RULES):
        yield mesh


def batch_sharding(mesh: Mesh, leading_axes: int = 0) -> jax.sharding.NamedSharding:
    """Batch arrays split over (data, fsdp) on their batch axis (after `leading_axes` unsplit axes, e.g. the
    micro-batch axis); every device of a context group sees the same sample."""
    spec = (None,) * leading_axes + (("data", "fsdp"),)
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))


def replicated(mesh: Mesh) -> jax.sharding.NamedSharding:
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def data_rank(mesh: Mesh, global_batch: int) -> tuple[int, int]:
    """(rank, count) of this process among the readers of the global batch: each process reads the samples of
    its own devices."""
    del mesh, global_batch
    return jax.process_index(), jax.process_count()


def put_batch(host_batch: dict, sh: jax.sharding.NamedSharding) -> dict:
    """This process's part of the batch (numpy) -> global jax arrays with the batch sharding."""
    return {k: jax.make_array_from_process_local_data(sh, np.asarray(v)) for k, v in host_batch.items()}
