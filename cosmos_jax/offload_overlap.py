"""`config.offload_overlap`: each step's update applied inside the next step's forward pass, block by block, so that
the host <-> device copies of the offloaded moments and EMA run while the blocks compute.

With `config.offload` alone the update follows the backward pass: the clip needs the global norm of every gradient,
so nothing is left to compute while 28 blocks of moments and EMA cross the PCIe bus (6-block slice, H100: +97 % step
time, scripts/gpu_offload.sh). Here step n ends with its clipped gradients kept on the device (`pending`); step n +
1's forward pass runs the blocks in a loop that, for block i, brings block i + d's moments and EMA to the device (d
= `config.offload_prefetch`: 1 or 2, the copies get d blocks of compute, for d - 1 more blocks of them on the
device; 0, block i's own at the top of its iteration: the fetch then waits for no write-back, and the write-back can
run under the block's compute, which a fetch that reads the buffer after the write keeps from happening:
scripts/bench_transfer.py's loop variants, README; `config.offload_midblock_fetch` orders the fetch after block i's
self-attention instead, so that the write-backs can run under the attention and the fetch under the rest), applies
step n's AdamW + EMA to block i (the same `offload.piece` as the plain offloaded update), writes them back to host
memory in place, and then runs block i with its new weights. Two optimization barriers keep XLA from interleaving a
block's reads, update and write-backs tensor by tensor (its host copies share four streams, each in order: a read or
slice copy the update needs would wait behind a write-back): with prefetch 0 every read lands before the update, and
the whole update is computed before the first write-back starts. The backward pass (a `jax.custom_vjp`) recomputes
each block from its saved input (remat `full`), or reuses the residuals the forward pass kept of each block (remat
`attention_outside`: the attention's inputs, output and statistics), and returns the gradients with respect to the
new weights. The tensors outside the blocks take their pending update before the forward pass.

The math is the plain step's: every forward pass sees the weights after all earlier updates; only the time at
which an update is applied moves. What reads the state between steps (save, export, validation, the end of
training) calls `flush` first, which applies a pending update the plain way; the next step then has none (`valid`
False: the loop computes the update and keeps the old values). The pending gradients (fp32, the params' size) stay
on the device between steps. Tested against the plain step in tests/test_offload_overlap.py.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from cosmos_jax import offload, sharding

_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("offload_overlap", default=None)
_MIDPOINT: contextvars.ContextVar = contextvars.ContextVar("offload_overlap_midpoint", default=None)


def midpoint(o_BLNK: jax.Array) -> jax.Array:
    """Called by each DiT block on its self-attention's output: the identity, except in the streamed forward pass
    with `config.offload_midblock_fetch`, where the next fetch is ordered here (`_forward`)."""
    hook = _MIDPOINT.get()
    return o_BLNK if hook is None else hook(o_BLNK)


@contextlib.contextmanager
def _at_midpoint(hook):
    token = _MIDPOINT.set(hook)
    try:
        yield
    finally:
        _MIDPOINT.reset(token)


def check(enabled: bool, parts, grad_accum: int, lora: bool, prefetch=1, midblock=False, remat="full") -> bool:
    if not enabled:
        return False
    if not isinstance(prefetch, int) or isinstance(prefetch, bool) or prefetch < 0:
        raise ValueError(f"config.offload_prefetch={prefetch!r}: expected an integer >= 0 (blocks whose moments and "
                         "EMA are fetched ahead in the forward pass)")
    if midblock not in (True, False):
        raise ValueError(f"config.offload_midblock_fetch={midblock!r}: expected True or False")
    if midblock and (prefetch < 1 or remat == "attention_outside"):
        raise ValueError(f"config.offload_midblock_fetch=True needs config.offload_prefetch >= 1 (got {prefetch}) and "
                         f"a remat other than attention_outside (got {remat!r}): it orders the fetch of a later "
                         "block after the self-attention of this one, which a block run under jax.vjp (the kept "
                         "residuals of attention_outside) cannot hand out")
    if not parts:
        raise ValueError("config.offload_overlap=True needs config.offload (the parts in host memory to stream)")
    if grad_accum != 1:
        raise ValueError(f"config.offload_overlap=True needs grad_accum=1 (got {grad_accum}): the pending update "
                         "is applied in the forward pass of the step's one micro-batch")
    if lora:
        raise ValueError("config.offload_overlap=True is for full fine-tuning (config.lora.rank=0): a LoRA job's "
                         "optimizer state is small enough to stay on the device")
    return True


# ---- the state's pending update ---------------------------------------------------------------------------------

def shardings(state_shardings: dict) -> dict:
    """The step's state shardings with `pending` (clipped gradients like the params, the EMA beta, valid)."""
    scalar = state_shardings["step"]
    return {**state_shardings, "pending": {"grads": state_shardings["params"], "beta": scalar, "valid": scalar}}


def with_pending(state: dict, state_shardings: dict) -> dict:
    """`state` (as saved: no pending update) with an empty pending update (valid False)."""
    sh = shardings(state_shardings)["pending"]

    def empty(params):
        return {"grads": jax.tree.map(jnp.zeros_like, params), "beta": jnp.zeros((), jnp.float32),
                "valid": jnp.zeros((), jnp.bool_)}
    return {**state, "pending": jax.jit(empty, out_shardings=sh)(state["params"])}


def saved(state: dict) -> dict:
    """What is saved or read between steps: the state without `pending` (call `flush` first)."""
    return {k: v for k, v in state.items() if k != "pending"}


def make_flush(state_shardings: dict, *, adamw, parts):
    """`flush(state) -> state`: the pending update applied (`offload.update`, no second clip), valid False.
    A no-op, without a computation, when nothing is pending."""
    sh = shardings(state_shardings)

    def apply(state):
        pend = state["pending"]
        params, opt_state, ema = offload.update(pend["grads"], state["params"], state["opt_state"], state["ema"],
                                                clip=optax.identity(), adamw=adamw, ema_beta=pend["beta"],
                                                parts=parts)
        return {**state, "params": params, "opt_state": opt_state, "ema": ema,
                "pending": {**pend, "valid": jnp.zeros((), jnp.bool_)}}
    jitted = jax.jit(apply, in_shardings=(sh,), out_shardings=sh, donate_argnums=(0,))

    def flush(state):
        return jitted(state) if bool(jax.device_get(state["pending"]["valid"])) else state
    return flush


# ---- inside the step --------------------------------------------------------------------------------------------

@dataclasses.dataclass(eq=False)
class BlockUpdate:
    """What the forward pass needs to apply the pending update to the stacked blocks, and where the new values go.
    `grads`, `moments` (the optimizer's param-shaped parts: Adam's mu, nu), `ema`: trees of the blocks' stacked
    tensors; `skeleton`: the optimizer state without them (the old step count)."""
    grads: dict
    moments: list
    ema: dict
    skeleton: object
    beta: jax.Array | None
    valid: jax.Array
    adamw: optax.GradientTransformation
    host_opt: bool
    host_ema: bool
    prefetch: int = 1  # blocks fetched ahead (config.offload_prefetch)
    midblock: bool = False  # the fetch ordered after the block's self-attention (config.offload_midblock_fetch)
    out: dict = dataclasses.field(default_factory=dict)  # params, moments, ema after the update (set by `run`)


def begin(state: dict, *, adamw, parts, ema_enabled: bool, prefetch: int = 1, midblock: bool = False):
    """At the start of a step: (params for the forward pass, the step's BlockUpdate, what `finish` needs). The
    tensors outside the blocks take the pending update now; the blocks keep their old values, updated in the
    forward pass (`run`)."""
    pend, params, ema = state["pending"], state["params"], state["ema"]
    treedef = jax.tree.structure(params)
    clip_state, adam_state = state["opt_state"]
    host_opt, host_ema = "opt_state" in parts, "ema" in parts
    beta = pend["beta"] if ema_enabled else None
    keep = jnp.logical_not(pend["valid"])
    rest_def = jax.tree.structure(offload._rest(params))
    skel_rest, m_rest = offload._partition(offload._map_param_shaped(adam_state, treedef, offload._rest), rest_def)
    p_rest, new_skeleton, m_rest, e_rest = offload.piece(
        offload._rest(pend["grads"]), offload._rest(params), skel_rest, m_rest, offload._rest(ema), adamw=adamw,
        ema_beta=beta, host_opt=host_opt, host_ema=host_ema, keep=keep)
    blocks_def = jax.tree.structure(offload._blocks(params))
    skel_blk, m_blk = offload._partition(offload._map_param_shaped(adam_state, treedef, offload._blocks), blocks_def)
    update = BlockUpdate(grads=_inner(pend["grads"]), moments=[_inner(m) for m in m_blk], ema=_inner(ema),
                         skeleton=skel_blk, beta=beta, valid=pend["valid"], adamw=adamw, host_opt=host_opt,
                         host_ema=host_ema, prefetch=prefetch, midblock=midblock)
    return offload._merge(offload._blocks(params), p_rest), update, (clip_state, new_skeleton, m_rest, e_rest)


def finish(grads, params_fwd, out: dict, rest, *, clip, beta) -> tuple[dict, tuple, dict, dict]:
    """At the end of a step: (params, opt_state, ema) after the pending update (the blocks' from the forward pass,
    `out`), and the new pending update: the clipped gradients and this step's EMA beta."""
    clip_state, skeleton, m_rest, e_rest = rest
    params = offload._merge(_outer(out["params"]), offload._rest(params_fwd))
    moments = [offload._merge(_outer(b), r) for b, r in zip(out["moments"], m_rest, strict=True)]
    ema = offload._merge(_outer(out["ema"]), e_rest)
    clipped, _ = clip.update(grads, clip.init(params))
    pending = {"grads": clipped, "beta": jnp.zeros((), jnp.float32) if beta is None else beta.astype(jnp.float32),
               "valid": jnp.ones((), jnp.bool_)}
    return params, (clip_state, offload._combine(skeleton, moments)), ema, pending


def _inner(tree):
    return tree[offload.BLOCKS[0]][offload.BLOCKS[1]]


def _outer(tree):
    return {offload.BLOCKS[0]: {offload.BLOCKS[1]: tree}}


@contextlib.contextmanager
def streaming(update: BlockUpdate):
    """Within: DiT.run_blocks runs its blocks through `run` (the model's forward as traced by the train step)."""
    token = _ACTIVE.set(update)
    try:
        yield update
    finally:
        _ACTIVE.reset(token)


def active() -> BlockUpdate | None:
    return _ACTIVE.get()


def run(apply_block: Callable, params_blk: dict, frozen_blk: dict, x_BLD: jax.Array, ctx: tuple,
        update: BlockUpdate, keep_residuals: bool = False) -> jax.Array:
    """The blocks' output for input `x_BLD`. `apply_block(p, frozen, x, ctx) -> x` runs one block with its
    trainable tensors `p` and the rest `frozen` (slices of the stacked trees); `ctx` holds the inputs every block
    reads (differentiable). Sets update.out to the blocks' params, moments and EMA after the pending update.
    The backward pass recomputes each block from its input, or with `keep_residuals` uses what the forward pass
    kept of each block: the residuals of `jax.vjp(apply_block)` (with remat `attention_outside`: the attention's
    inputs, output and statistics; the rest is recomputed)."""
    p_new, m_new, e_new, x_BLD = _stream(_Static(apply_block, update, keep_residuals), params_blk, frozen_blk, x_BLD,
                                         ctx, (update.grads, update.moments, update.ema, update.beta, update.valid,
                                               update.skeleton))
    update.out.update(params=p_new, moments=m_new, ema=e_new)
    return x_BLD


@dataclasses.dataclass(frozen=True, eq=False)
class _Static:
    apply_block: Callable
    update: BlockUpdate
    keep_residuals: bool
    residual_tree: list = dataclasses.field(default_factory=list)  # the treedef of one block's vjp (traced once)


def _block_vjp(static: _Static, p, f, x, ctx):
    return jax.vjp(lambda p, x, c: static.apply_block(p, f, x, c), p, x, ctx)


def _forward(static: _Static, p_all, frozen, x, ctx, pend):
    grads, moments, ema, beta, valid, skeleton = pend
    u = static.update
    n = jax.tree.leaves(p_all)[0].shape[0]
    hosted_m, hosted_e = u.host_opt, u.host_ema and ema is not None

    def fetch(m_all, e_all, i):
        return offload.fetch_block(m_all, e_all, i, host_opt=hosted_m, host_ema=hosted_e)

    # What the backward pass reads of block i, stacked over the blocks: its input, or its vjp's residuals.
    if static.keep_residuals:
        _, vjp = jax.eval_shape(functools.partial(_block_vjp, static), offload._take(p_all, 0),
                                offload._take(frozen, 0), x, ctx)
        leaves, treedef = jax.tree.flatten(vjp)
        static.residual_tree[:] = [treedef]
        saved = [jnp.zeros((n, *a.shape), a.dtype) for a in leaves]
    else:
        saved = [sharding.constrain(jnp.zeros((n, *x.shape), x.dtype), None, "act_batch", "act_length", None)]

    def body(i, carry):
        x, p_all, m_all, e_all, saved, ahead = carry
        if u.prefetch:
            (m_i, e_i), ahead = ahead[0], ahead[1:]
        else:  # block i's own, read here: no read of the buffer waits for a write-back to land. (The GPU compile
            # reads it into a device buffer and writes back in place, scripts/aot_hlo.py; the CPU's, where the
            # read is no copy, copies the whole stacked buffers instead: a GPU setting)
            m_i, e_i = fetch(m_all, e_all, i)
            # All of the block's reads land before its first write-back starts: XLA runs host copies on four
            # streams in turn, and a read queued behind a write-back there would hold up the update.
            m_i, e_i = jax.lax.optimization_barrier((m_i, e_i))
        keep = jnp.logical_not(valid)
        # The block's whole update on the device, then its write-backs: a slice copy the update needs, queued
        # behind a write-back on the same copy stream, would hold the update up.
        p, _, m, _ = offload.piece(offload._take(grads, i), offload._take(p_all, i), skeleton, m_i, None,
                                   adamw=u.adamw, ema_beta=None, host_opt=False, host_ema=False, keep=keep)
        p_all = offload._put(p_all, p, i)
        p = offload._take(p_all, i)  # the block as written: its only reader after the write (offload.ema_piece)
        e_new = None if beta is None else offload.ema_piece(e_i, p, beta, host_ema=False, keep=keep)
        p, m, e_new = jax.lax.optimization_barrier((p, m, e_new))
        m_all = [offload._put(a, offload.on_host(b) if hosted_m else b, i) for a, b in zip(m_all, m, strict=True)]
        if beta is not None:
            e_all = offload._put(e_all, offload.on_host(e_new) if hosted_e else e_new, i)
        # block i + d's moments and EMA (d = u.prefetch), read from the buffers as just written (offload.update
        # says why), while blocks i .. i + d - 1 compute
        nxt = jnp.minimum(i + u.prefetch, n - 1)
        if u.prefetch and not u.midblock:
            ahead = (*ahead, fetch(m_all, e_all, nxt))
        if static.keep_residuals:
            x, vjp = _block_vjp(static, p, offload._take(frozen, i), x, ctx)
            saved = [offload._put(a, b, i) for a, b in zip(saved, jax.tree.leaves(vjp), strict=True)]
        elif u.midblock:  # the buffers as written pass an optimization barrier with the self-attention's output:
            # the write-backs land before it and the fetch, which reads them, starts after it. (Not the index: an
            # offset that is no function of the loop counter makes XLA read host memory with SM kernels instead
            # of the copy engines, scripts/aot_hlo.py)
            at = []

            def hook(o_BLNK):
                o_BLNK, *rest = jax.lax.optimization_barrier((o_BLNK, m_all, e_all))
                at.append(rest)
                return o_BLNK
            saved = [offload._put(saved[0], x, i)]
            with _at_midpoint(hook):
                x = static.apply_block(p, offload._take(frozen, i), x, ctx)
            if len(at) != 1:
                raise RuntimeError(f"offload_midblock_fetch: the block called offload_overlap.midpoint {len(at)} "
                                   "times, expected once (after its self-attention)")
            m_all, e_all = at[0]
            ahead = (*ahead, fetch(m_all, e_all, nxt))
        else:
            saved = [offload._put(saved[0], x, i)]
            x = static.apply_block(p, offload._take(frozen, i), x, ctx)
        return x, p_all, m_all, e_all, saved, ahead

    ahead = tuple(fetch(moments, ema, min(k, n - 1)) for k in range(u.prefetch))
    x, p_all, moments, ema, saved, _ = jax.lax.fori_loop(0, n, body, (x, p_all, moments, ema, saved, ahead))
    return (p_all, moments, ema, x), (p_all, frozen, saved, ctx)


def _backward(static: _Static, res, cts):
    p_all, frozen, saved, ctx = res
    ct_x = cts[-1]
    n = jax.tree.leaves(p_all)[0].shape[0]

    def body(j, carry):
        ct_x, g_all, ct_ctx = carry
        i = n - 1 - j
        if static.keep_residuals:
            vjp = jax.tree.unflatten(static.residual_tree[0], [offload._take(a, i) for a in saved])
        else:
            _, vjp = _block_vjp(static, offload._take(p_all, i), offload._take(frozen, i),
                                offload._take(saved[0], i), ctx)
        g, ct_x, d_ctx = vjp(ct_x)
        return ct_x, offload._put(g_all, g, i), jax.tree.map(jnp.add, ct_ctx, d_ctx)

    zeros = jax.tree.map(jnp.zeros_like, (p_all, ctx))
    ct_x, g_all, ct_ctx = jax.lax.fori_loop(0, n, body, (ct_x, *zeros))
    return g_all, None, ct_x, ct_ctx, None


def _primal(static, p_all, frozen, x, ctx, pend):
    return _forward(static, p_all, frozen, x, ctx, pend)[0]


_stream = jax.custom_vjp(_primal, nondiff_argnums=(0,))
_stream.defvjp(_forward, _backward)
