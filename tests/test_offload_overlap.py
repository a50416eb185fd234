"""config.offload_overlap: each step's update applied in the next step's forward pass, block by block. Same losses
and weights as the plain step once flushed, on one device and on an fsdp mesh; the deferral is real; bad configs."""

import jax
import numpy as np
import pytest

from cosmos_jax import offload_overlap, optim, sharding
from cosmos_jax import step as step_lib
from cosmos_jax import train_state as ts
from cosmos_jax.models import build
from cosmos_jax.weights import tokenizer as tok
from cosmos_jax.weights import tree
from tests.test_offload import BOTH, batch, kinds, run, tiny


def overlapped_step(c, mesh):
    """(the jitted overlapped step, its batch sharding, the state shardings, its StepConfig, fresh_state): call
    fresh_state() under sharding.activate(mesh) for a new state with an empty pending update."""
    cfg, tx = build.dit_config(c), optim.make(c)
    graphdef, _, sh = ts.layout(cfg, tx, mesh, offload=tuple(c.offload))
    batch_sh = sharding.batch_sharding(mesh, leading_axes=1)
    scfg = step_lib.StepConfig.from_config(c)
    step = step_lib.jit_train_step(offload_overlap.shardings(sh), batch_sh, graphdef=graphdef,
                                   tx_parts=optim.parts(c), cfg=scfg, tokenizer=tok.from_config(c))
    return step, batch_sh, sh, scfg, lambda: offload_overlap.with_pending(ts.create(cfg, tx, mesh, sh), sh)


def run_overlap(c, mesh, steps=3, flush=True):
    """(state, losses) after `steps` overlapped steps from a fresh state, flushed at the end unless told not to."""
    step, batch_sh, sh, scfg, fresh_state = overlapped_step(c, mesh)
    losses = []
    with sharding.activate(mesh):
        state = fresh_state()
        for i in range(steps):
            state, m = step(state, sharding.put_batch(batch(i), batch_sh, 2), jax.random.key(i))
            losses.append(float(m["loss"]))
        if flush:
            state = offload_overlap.make_flush(sh, adamw=optim.parts(c)[1], parts=scfg.offload)(state)
    return state, losses


def relative_errors(a, b):
    """||a - b|| / ||b|| of every tensor of params, EMA and optimizer state."""
    out = {}
    for part in ("params", "ema", "opt_state"):
        for (p, x), y in zip(tree.flat(a[part]).items() if part != "opt_state" else
                             enumerate(jax.tree.leaves(a[part])),
                             tree.flat(b[part]).values() if part != "opt_state" else jax.tree.leaves(b[part]),
                             strict=True):
            x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
            out[(part, p)] = float(np.linalg.norm(x - y) / max(np.linalg.norm(y), 1e-30))
    return out


def overlap_config(parts=BOTH, remat="full", prefetch=1, midblock=False):
    c = tiny(parts)
    c.offload_overlap = True
    c.remat = remat  # full: each block recomputed from its input; attention_outside: its vjp's residuals kept
    c.offload_prefetch = prefetch  # 2 on 3 blocks: the last fetch clamped to a block not yet written
    c.offload_midblock_fetch = midblock  # the fetch ordered after the block's self-attention
    return c


def plain_config(remat="full"):
    """The reference: no offload, the same remat (remat itself moves fp32 results by ~1.5e-6 relative here: the
    backward sums in another order)."""
    c = tiny(())
    c.remat = remat
    return c


@pytest.mark.parametrize("fsdp,remat,prefetch,midblock", [(1, "attention_outside", 1, False), (2, "full", 2, False),
                                                          (1, "full", 0, False), (2, "full", 1, True)])
def test_overlapped_steps_match_the_plain_step(fsdp, remat, prefetch, midblock):
    mesh = sharding.make_mesh((("data", 1), ("fsdp", fsdp), ("context", 1)), devices=jax.devices()[:fsdp])
    plain, plain_losses, _, _ = run(plain_config(remat), mesh)
    over, losses = run_overlap(overlap_config(remat=remat, prefetch=prefetch, midblock=midblock), mesh)
    np.testing.assert_allclose(losses, plain_losses, rtol=1e-6)
    assert not bool(over["pending"]["valid"]) and int(over["opt_state"][1][0].count) == 3
    assert kinds(over["ema"]) == {"pinned_host"} and kinds(over["opt_state"]) == {"pinned_host"}
    errors = relative_errors(offload_overlap.saved(over), plain)
    assert max(errors.values()) <= 1e-6, max(errors.items(), key=lambda kv: kv[1])


def test_the_update_waits_for_the_next_step():
    """Unflushed, 3 overlapped steps hold the weights of 2 plain steps (the third update is pending), and the
    flush is what applies it."""
    mesh = sharding.one_device_mesh()
    two, _, _, _ = run(plain_config(), mesh, steps=2)
    three, _, _, _ = run(plain_config(), mesh, steps=3)
    over, _ = run_overlap(overlap_config(("opt_state",)), mesh, flush=False)
    assert bool(over["pending"]["valid"]) and int(over["opt_state"][1][0].count) == 2
    assert kinds(over["ema"]) == {"device"}
    assert max(relative_errors(offload_overlap.saved(over), two).values()) <= 1e-6
    assert min(v for (part, _), v in relative_errors(offload_overlap.saved(over), three).items()
               if part == "params") > 1e-5


@pytest.mark.parametrize("edit,msg", [(dict(offload=()), "needs config.offload"),
                                      (dict(grad_accum=2), "needs grad_accum=1"),
                                      (dict(lora=True), "for full fine-tuning"),
                                      (dict(prefetch=-1), "offload_prefetch=-1: expected an integer >= 0"),
                                      (dict(prefetch=0, midblock=True), r"offload_prefetch >= 1 \(got 0\)"),
                                      (dict(remat="attention_outside", midblock=True),
                                       "a remat other than attention_outside")])
def test_bad_overlap_configs(edit, msg):
    c = overlap_config(prefetch=edit.get("prefetch", 1), remat=edit.get("remat", "full"),
                       midblock=edit.get("midblock", False))
    c.offload = edit.get("offload", c.offload)
    c.grad_accum = edit.get("grad_accum", 1)
    if edit.get("lora"):
        c.lora.rank = 4
    with pytest.raises(ValueError, match=msg):
        step_lib.StepConfig.from_config(c)


def _eqns(jaxpr):
    """Every equation of a jaxpr and of the jaxprs inside it (loops, jit, custom_vjp)."""
    for e in jaxpr.eqns:
        yield e
        for p in e.params.values():
            for sub in (p if isinstance(p, (tuple, list)) else (p,)):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _eqns(inner)


@pytest.mark.parametrize("prefetch,midblock", [(0, False), (1, True)])
def test_block_reads_index_by_the_loop_counter(prefetch, midblock):
    """The block loop's slice indices never pass an optimization barrier: an index that is no function of the loop
    counter makes XLA's GPU compile read host memory with SM kernels instead of the copy engines
    (docs/offload.md), which the first midblock fetch did."""
    mesh = sharding.one_device_mesh()
    step, _, _, _, fresh_state = overlapped_step(overlap_config(prefetch=prefetch, midblock=midblock), mesh)
    with sharding.activate(mesh):
        jaxpr = jax.make_jaxpr(step)(fresh_state(), batch(0), jax.random.key(0)).jaxpr
    barriers = [e for e in _eqns(jaxpr) if e.primitive.name == "optimization_barrier"]
    assert len(barriers) == 2  # prefetch 0: after the reads and the update; midblock: the update, the midpoint
    for e in barriers:
        assert not [v for v in e.invars if v.aval.shape == () and np.issubdtype(v.aval.dtype, np.integer)], (
            "an integer scalar (a slice index) passes an optimization barrier")
