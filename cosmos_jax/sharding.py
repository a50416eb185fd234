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
BATCH_AXES = ("data", "fsdp")  # the batch is split over these: one sample per data-parallel device
CONTEXT_AXIS = "context"  # the token sequence is split over this (Ulysses attention: models/context_parallel.py)

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


def one_device_mesh(device: jax.Device | None = None) -> Mesh:
    """The mesh of every axis at size 1 on one device (the first unless given): loading and export."""
    return make_mesh((("data", 1), ("fsdp", 1), ("context", 1)), devices=[device or jax.devices()[0]])


# logical activation axes -> mesh axes (used by `constrain`)
ACTIVATION_RULES: dict[str, str | tuple[str, ...] | None] = {
    "act_batch": BATCH_AXES,
    "act_length": CONTEXT_AXIS,
}


@contextlib.contextmanager
def activate(mesh: Mesh):
    """Set the mesh and the logical rules: build models, states and steps inside this."""
    with jax.set_mesh(mesh), nnx.logical_axis_rules(LOGICAL_RULES):
        yield mesh


def current_mesh():
    """The mesh set by `activate` (abstract inside jit), or None outside any mesh."""
    mesh = jax.sharding.get_abstract_mesh()
    return None if mesh.empty else mesh


def axis_size(name: str) -> int:
    """Size of a mesh axis in the active mesh (1 without one)."""
    mesh = current_mesh()
    return 1 if mesh is None or name not in mesh.axis_names else int(mesh.shape[name])


def activation_spec(shape: Sequence[int], logical: Sequence[str | None]) -> jax.sharding.PartitionSpec:
    """PartitionSpec of an activation from its logical axes; an axis whose size the mesh axes do not divide
    (e.g. a batch of 1 for generation on 4 GPUs) stays unsplit."""
    mesh = current_mesh()
    out = []
    for dim, name in zip(shape, logical, strict=True):
        axes = ACTIVATION_RULES.get(name) if name else None
        if axes is not None:
            size = int(np.prod([mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes)]))
            axes = axes if size > 1 and dim % size == 0 else None
        out.append(axes)
    return jax.sharding.PartitionSpec(*out)


def constrain(x: jax.Array, *logical: str | None) -> jax.Array:
    """Pin an activation's sharding by logical axis names ("act_batch", "act_length", None); no-op without a
    mesh."""
    if current_mesh() is None:
        return x
    return jax.lax.with_sharding_constraint(x, activation_spec(x.shape, logical))


def gather(w: jax.Array) -> jax.Array:
    """A parameter all-gathered for use (FSDP / ZeRO-3): called inside the block so that the gather is redone in
    the rematerialised backward instead of the gathered copy being stored; its transpose is a reduce-scatter of
    the gradient. No-op without a mesh."""
    if current_mesh() is None:
        return w
    return jax.lax.with_sharding_constraint(w, jax.sharding.PartitionSpec())


def batch_sharding(mesh: Mesh, leading_axes: int = 0) -> jax.sharding.NamedSharding:
    """Batch arrays split over (data, fsdp) on their batch axis (after `leading_axes` unsplit axes, e.g. the
    micro-batch axis); every device of a context group sees the same sample."""
    spec = (None,) * leading_axes + (BATCH_AXES,)
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))


def replicated(mesh: Mesh) -> jax.sharding.NamedSharding:
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def data_rank(mesh: Mesh, global_batch: int) -> tuple[int, int]:
    """(rank, count) of this process among the readers of the global batch: rank r of n reads rows
    [r * B/n, (r + 1) * B/n). The rows are those the batch sharding puts on this process's devices, so it is the
    data-parallel group that decides, not `jax.process_index()`: processes whose devices form one context group
    (and so need the same sample) get the same rank."""
    index = batch_sharding(mesh).addressable_devices_indices_map((global_batch,))
    rows = sorted({r for (sl,) in index.values() for r in range(*sl.indices(global_batch))})
    if rows != list(range(rows[0], rows[0] + len(rows))) or global_batch % len(rows) or rows[0] % len(rows):
        raise ValueError(f"process {jax.process_index()} holds batch rows {rows} of {global_batch}: expected one "
                         f"contiguous aligned block (check config.mesh against the processes' devices)")
    return rows[0] // len(rows), global_batch // len(rows)


def put_batch(host_batch: dict, sh: jax.sharding.NamedSharding, global_batch: int | None = None) -> dict:
    """This process's rows of the batch (numpy, batch on axis `leading_axes`) -> global jax arrays."""
    axis = len(sh.spec) - 1
    out = {}
    for k, v in host_batch.items():
        v = np.asarray(v)
        shape = v.shape if global_batch is None else v.shape[:axis] + (global_batch,) + v.shape[axis + 1:]
        out[k] = jax.make_array_from_process_local_data(sh, v, shape)
    return out


def to_host(tree):
    """Numpy copies of (possibly multi-process) arrays, leaf by leaf. Every process must call it (arrays sharded
    over other processes' devices are all-gathered); only one leaf at a time is gathered whole."""
    from jax.experimental import multihost_utils

    def one(a):
        if not isinstance(a, jax.Array) or a.is_fully_addressable:
            return np.asarray(jax.device_get(a))
        return np.asarray(multihost_utils.process_allgather(a, tiled=True))
    return jax.tree.map(one, tree)
