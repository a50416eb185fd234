"""Parts of the train state in pinned host memory, streamed through the update one block at a time.

`config.offload` names parts of the state (`"opt_state"`: the Adam moments; `"ema"`) that live in host memory
(JAX memory kind `pinned_host`) between steps. The jitted step computes the gradients as usual; then the update
runs as
  1. clip: optax's `clip_by_global_norm` on the whole gradient tree (the global norm needs every gradient),
  2. the tensors outside the blocks (embedders, final layer, logvar): their moments and EMA are brought to the
     device, AdamW + EMA, and stored back,
  3. the 28 stacked blocks in a loop: block i's moments and EMA are brought to the device (fetched one iteration
     ahead, so the copy can overlap the previous block's work), block i's AdamW step and EMA update run, and the new
     values are written back into the host buffers in place, so the device holds two blocks of them at a time and
     the host no second copy.
AdamW is optax's own transformation applied to each part (its step count advances once per update), and the EMA is
`ema.update` on each part: the same fp32 math as the plain step, in another grouping (tests/test_offload.py checks
the losses and weights against the plain step).

Offload is orthogonal to the mesh: the host copies keep the device shardings' partition specs (each device's shard
lives in its own host's memory), so `fsdp` / `context` meshes offload their shards.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding

PARTS = ("opt_state", "ema")
HOST = "pinned_host"
BLOCKS = ("net", "blocks")  # the stacked blocks (model.scan_blocks): leading axis = block index


HOST_LIMIT_VAR = "XLA_PJRT_GPU_HOST_MEMORY_LIMIT_GB"  # JAX's pinned-host allocator cap (default 64 GB)


def raise_host_memory_limit(parts, fraction: float = 0.9) -> int | None:
    """Before the GPU backend starts: let JAX's pinned-host allocator use `fraction` of this machine's RAM where
    `parts` are offloaded and the user has not set XLA_PJRT_GPU_HOST_MEMORY_LIMIT_GB. Its default cap, 64 GB, is
    below the 7B's 81 GiB of host-resident moments and EMA (the step fails with RESOURCE_EXHAUSTED: Out of host
    memory). Returns the limit set, in GB, or None where nothing was changed."""
    if not parts or os.environ.get(HOST_LIMIT_VAR):
        return None
    ram_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    limit = max(1, int(fraction * ram_gb))
    os.environ[HOST_LIMIT_VAR] = str(limit)
    return limit


COMMAND_BUFFER_FLAG = "--xla_gpu_enable_command_buffer"
# What XLA may record into CUDA graphs where parts are offloaded: kernels, GEMMs, cuDNN and custom calls, not whole
# loops (WHILE, CONDITIONAL) nor dynamic-slice copies. Measured on an H100 (JAX 0.11, scripts/gpu_offload.sh
# slicetrace): with XLA's defaults the blocks' loops ran as CUDA graphs whose host <-> device copies executed one
# after another on the compute stream, beside no kernel (0.73 s of copies, 0.009 s of it under kernels, in a 4.07 s
# step of the 6-block slice). With this value the same slice cost +9.9 % over no offload instead of +19.3 % (H100,
# offload_prefetch=0, 2026-12-07); a profile with it shows the write-backs under the blocks' kernels and the fetches
# alone (docs/offload.md). Also tried: XLA's limit of async copies in flight raised from 2 to 256
# (--xla_gpu_experimental_parallel_async_compute_limit): no measurable change on the card (+9.7 % against +10.1 %).
COMMAND_BUFFER_TYPES = "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN"


def keep_host_copies_async(parts) -> str | None:
    """Before the GPU backend starts: where `parts` are offloaded and the user's XLA_FLAGS name no
    --xla_gpu_enable_command_buffer, add it with COMMAND_BUFFER_TYPES (the loops that stream the offloaded state
    stay out of CUDA graphs, so their copies overlap the compute). Returns the flag added, or None."""
    flags = os.environ.get("XLA_FLAGS", "")
    if not parts or COMMAND_BUFFER_FLAG in flags:
        return None
    flag = f"{COMMAND_BUFFER_FLAG}={COMMAND_BUFFER_TYPES}"
    os.environ["XLA_FLAGS"] = f"{flags} {flag}".strip()
    return flag


def prepare_backend(parts) -> list[str]:
    """Before the GPU backend starts, what an offloaded run needs of it (the train command and bench_train.py both
    call this): raise_host_memory_limit, keep_host_copies_async. Returns what was set, for the log."""
    done = []
    if gb := raise_host_memory_limit(parts):
        done.append(f"pinned host memory capped at {gb} GB ({HOST_LIMIT_VAR})")
    if flag := keep_host_copies_async(parts):
        done.append(f"XLA_FLAGS += {flag} (the streaming loops outside CUDA graphs)")
    return done


def check(offload, scan_blocks: bool) -> tuple[str, ...]:
    """The validated `config.offload` tuple (ValueError naming the value and what is expected)."""
    parts = tuple(offload or ())
    bad = [p for p in parts if p not in PARTS]
    if bad or len(set(parts)) != len(parts):
        raise ValueError(f"config.offload={parts!r}: expected a tuple of distinct names from {PARTS}")
    if parts and not scan_blocks:
        raise ValueError("config.offload needs model.scan_blocks=True (the update streams the stacked blocks)")
    return parts


def shardings(state_shardings: dict, params_treedef, parts) -> dict:
    """The state's shardings with the param-shaped tensors of `parts` in pinned host memory (scalars such as the
    optimizer's step count stay on the device)."""
    out = dict(state_shardings)
    for part in parts:
        out[part] = _map_param_shaped(state_shardings[part], params_treedef,
                                      lambda t: jax.tree.map(lambda s: s.with_memory_kind(HOST), t))
    return out


def on_device(tree):
    """Inside jit: `tree` in device memory (a no-op for arrays already there)."""
    return jax.tree.map(lambda a: jax.device_put(a, jax.memory.Space.Device), tree)


def on_host(tree):
    """Inside jit: `tree` in host memory."""
    return jax.tree.map(lambda a: jax.device_put(a, jax.memory.Space.Host), tree)


def to_device(tree):
    """Outside jit: a copy of `tree` in device memory with the same partition specs (validation and samples read
    the EMA on the device)."""
    def put(a):
        s = a.sharding
        if isinstance(s, NamedSharding) and s.memory_kind == HOST:
            return jax.device_put(a, s.with_memory_kind("device"))
        return a
    return jax.tree.map(put, tree)


def update(grads, params, opt_state, ema, *, clip, adamw, ema_beta, parts):
    """(params, opt_state, ema) after one step, streaming the blocks of the offloaded parts (module docstring).
    `clip` and `adamw` are the two halves of `optim.make` (`optim.parts`); `ema_beta` None = EMA off."""
    grads, _ = clip.update(grads, clip.init(params))
    treedef = jax.tree.structure(params)
    clip_state, adam_state = opt_state
    host_opt, host_ema = "opt_state" in parts, "ema" in parts

    def one(g, p, skeleton, moments, e):
        return piece(g, p, skeleton, moments, e, adamw=adamw, ema_beta=ema_beta, host_opt=host_opt,
                     host_ema=host_ema)

    # Outside the blocks: one piece. Its new skeleton carries the advanced step count for the whole state.
    rest_def = jax.tree.structure(_rest(params))
    skel_rest, moments_rest = _partition(_map_param_shaped(adam_state, treedef, _rest), rest_def)
    p_rest, new_skeleton, moments_rest, e_rest = one(_rest(grads), _rest(params), skel_rest, moments_rest,
                                                     _rest(ema))

    # The blocks: a loop over the stacked leading axis whose carry holds the whole stacked params, moments and EMA,
    # each block's new values written back into them in place (a scan's stacked outputs were a second host copy of
    # the moments and EMA: 80 GiB of host temporaries at 28 blocks, measured). Block i + 1's moments and EMA are
    # fetched in iteration i, from the buffers as block i was written into them: read before that write, the read
    # and the in-place write of one buffer have no set order, and XLA copies the whole buffer in every iteration
    # (tests/test_offload.py reads the compiled HLO). Every block sees the same (old) step count.
    blocks_def = jax.tree.structure(_blocks(params))
    skel_blk, moments_blk = _partition(_map_param_shaped(adam_state, treedef, _blocks), blocks_def)
    g_blk = _blocks(grads)
    n = jax.tree.leaves(g_blk)[0].shape[0]

    def fetch(moments, e, i):
        return fetch_block(moments, e, i, host_opt=host_opt, host_ema=host_ema)

    def body(i, carry):
        p_all, m_all, e_all, m_i, e_i = carry
        p, _, m, _ = piece(_take(g_blk, i), _take(p_all, i), skel_blk, m_i, None, adamw=adamw, ema_beta=None,
                           host_opt=host_opt, host_ema=host_ema)
        p_all = _put(p_all, p, i)
        m_all = [_put(a, b, i) for a, b in zip(m_all, m, strict=True)]
        if ema_beta is not None:  # from the block as written (ema_piece says why)
            e_all = _put(e_all, ema_piece(e_i, _take(p_all, i), ema_beta, host_ema=host_ema), i)
        return p_all, m_all, e_all, *fetch(m_all, e_all, jnp.minimum(i + 1, n - 1))

    ema_blk = _blocks(ema)
    p_blk, moments_blk, e_blk, _, _ = jax.lax.fori_loop(
        0, n, body, (_blocks(params), moments_blk, ema_blk, *fetch(moments_blk, ema_blk, 0)))
    moments = [_merge(b, r) for b, r in zip(moments_blk, moments_rest, strict=True)]
    adam_state = _combine(new_skeleton, moments)  # skeletons hold no param-shaped parts: any piece's will do
    return _merge(p_blk, p_rest), (clip_state, adam_state), _merge(e_blk, e_rest)


def piece(g, p, skeleton, moments, e, *, adamw, ema_beta, host_opt: bool, host_ema: bool, keep=None):
    """AdamW + EMA of one piece of the params (a block, or the tensors outside the blocks): (p, skeleton, moments,
    e) after the update, moments and EMA back where they came from (host memory for the offloaded parts).
    `skeleton` = the piece's optimizer state without the moments (the step count). `keep` (a traced bool, or None):
    where True the old values are returned instead (offload_overlap's first step, which has no pending update)."""
    moments, e = (on_device(moments) if host_opt else moments), (on_device(e) if host_ema and e is not None else e)
    state = _combine(skeleton, moments)
    upd, new_state = adamw.update(g, state, p)
    new_p = optax.apply_updates(p, upd)
    new_e = e if ema_beta is None else _ema(e, new_p, ema_beta)
    if keep is not None:
        new_p, new_state, new_e = jax.tree.map(lambda new, old: jnp.where(keep, old, new),
                                               (new_p, new_state, new_e), (p, state, e))
    skeleton, moments = _partition(new_state, jax.tree.structure(p))
    return new_p, skeleton, (on_host(moments) if host_opt else moments), (
        on_host(new_e) if host_ema and new_e is not None else new_e)


def fetch_block(moments, e, i, *, host_opt: bool, host_ema: bool):
    """Block i of the stacked moments (a list of trees) and EMA, on the device."""
    return ([on_device(_take(m, i)) if host_opt else _take(m, i) for m in moments],
            on_device(_take(e, i)) if host_ema else _take(e, i))


def ema_piece(e, p, beta, *, host_ema: bool, keep=None):
    """The EMA of one piece moved toward its updated params `p`, back where it came from; `keep` as in `piece`.
    The block loops call it with `p` read back from the stacked params after the block was written into them: a
    second reader of the old block (the update recomputed inside the EMA's fusion) makes XLA copy the whole
    stacked buffer in every iteration (tests/test_offload.py reads the compiled HLO)."""
    e_dev = on_device(e) if host_ema else e
    new = _ema(e_dev, p, beta)
    if keep is not None:
        new = jax.tree.map(lambda n, o: jnp.where(keep, o, n), new, e_dev)
    return on_host(new) if host_ema else new


def _take(tree, i):
    """Block i of stacked tensors (inside jit; None stays None)."""
    return jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, i, keepdims=False), tree)


def _put(tree, block, i):
    """`tree` with block i replaced by `block` (in place where XLA can)."""
    return jax.tree.map(lambda a, b: jax.lax.dynamic_update_index_in_dim(a, b.astype(a.dtype), i, 0), tree, block)


def _ema(e, p, beta):
    from cosmos_jax import ema as ema_lib

    return ema_lib.update(e, p, beta)


# ---- sub-trees of the params: the stacked blocks and the rest ---------------------------------------------------

def _blocks(tree):
    return None if tree is None else {BLOCKS[0]: {BLOCKS[1]: tree[BLOCKS[0]][BLOCKS[1]]}}


def _rest(tree):
    if tree is None:
        return None
    out = {k: v for k, v in tree.items() if k != BLOCKS[0]}
    net = {k: v for k, v in tree[BLOCKS[0]].items() if k != BLOCKS[1]}
    return {BLOCKS[0]: net, **out} if net else out


def _merge(blocks, rest):
    net = {**rest.get(BLOCKS[0], {}), **blocks[BLOCKS[0]]}
    return {**rest, BLOCKS[0]: net}


# ---- optimizer states: param-shaped sub-trees (mu, nu) and the rest (counts) ----------------------------------

def _is_param_shaped(x, treedef) -> bool:
    return isinstance(x, dict) and jax.tree.structure(x) == treedef


def _map_param_shaped(state, treedef, fn):
    """`state` with every param-shaped sub-tree (e.g. Adam's mu and nu) replaced by fn(sub-tree)."""
    return jax.tree.map(lambda x: fn(x) if _is_param_shaped(x, treedef) else x, state,
                        is_leaf=lambda x: _is_param_shaped(x, treedef))


def _partition(state, treedef):
    """(state with its param-shaped parts, for params of structure `treedef`, replaced by None; those parts)."""
    found = []

    def take(x):
        found.append(x)
        return None
    skeleton = jax.tree.map(lambda x: take(x) if _is_param_shaped(x, treedef) else x, state,
                            is_leaf=lambda x: _is_param_shaped(x, treedef))
    return skeleton, found


def _combine(skeleton, parts):
    it = iter(parts)
    return jax.tree.map(lambda x: next(it) if x is None else x, skeleton, is_leaf=lambda x: x is None)
