"""The train state as one pytree of plain dicts, created already sharded.

state = {"step": int32, "params": fp32 trainable tensors, "buffers": persistent buffers (never trained),
         "opt_state": optax state, "ema": fp32 EMA of params}
`params`, `buffers` and `ema` are nested dicts in the model's layout (`nnx.to_pure_dict`); `nnx.merge(graphdef,
params, buffers)` rebuilds the network inside a jitted function. Shapes come from `jax.eval_shape`, shardings from
the parameters' logical names (cosmos_jax/sharding.py), and `jax.jit(init, out_shardings=...)` materialises the
state in place, so no full copy ever sits on one device.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cosmos_jax import offload as offload_lib
from cosmos_jax import sharding
from cosmos_jax.models.dit import DiffusionNet, DiTConfig
from cosmos_jax.models.layers import Buffer
from cosmos_jax.weights import tree

State = dict[str, Any]


def _split_states(model: DiffusionNet):
    """(graphdef, trainable State, frozen State). Full fine-tune: every Param trains, Buffers are frozen. LoRA
    (the model has `nnx.LoRAParam`s): only the adapters train; the base Params join the frozen state."""
    lora = any(isinstance(v, nnx.LoRAParam) for _, v in nnx.to_flat_state(nnx.state(model)))
    return nnx.split(model, nnx.LoRAParam, ...) if lora else nnx.split(model, nnx.Param, Buffer)


def split(model: DiffusionNet):
    """(graphdef, params dict, buffers dict): what the optimizer trains, and everything else (buffers; with LoRA
    also the frozen base weights). `nnx.merge(graphdef, params, buffers)` rebuilds the model."""
    graphdef, params, buffers = _split_states(model)
    return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(buffers)


def _specs(state, mesh):
    """NamedShardings from each variable's logical names (replicated where it has none, e.g. buffers)."""
    specs = nnx.to_pure_dict(nnx.get_partition_spec(state))
    return jax.tree.map(lambda s: NamedSharding(mesh, s if isinstance(s, P) else P()), specs,
                        is_leaf=lambda x: isinstance(x, P))


def _model_layout(cfg: DiTConfig, mesh):
    """graphdef and the logical-name shardings of params/buffers, from an abstract model (no memory)."""
    with sharding.activate(mesh):
        abstract = nnx.eval_shape(lambda: DiffusionNet(cfg, rngs=nnx.Rngs(0)))
        graphdef, params, buffers = _split_states(abstract)
        return graphdef, _specs(params, mesh), _specs(buffers, mesh)


def _init_fn(cfg: DiTConfig, tx: optax.GradientTransformation, seed: int):
    def init() -> State:
        model = DiffusionNet(cfg, rngs=nnx.Rngs(seed))
        _, params, buffers = split(model)
        if cfg.lora_rank:  # the frozen base is only read: keep it in the compute dtype (7B: 14.5 GB in bf16)
            kinds = {tuple(map(str, p)): type(v) for p, v in nnx.to_flat_state(nnx.state(model))}
            buffers = tree.unflat({p: a.astype(cfg.dtype) if kinds[p] is nnx.Param else a
                                   for p, a in tree.flat(buffers).items()})
        return {"step": jnp.zeros((), jnp.int32), "params": params, "buffers": buffers,
                "opt_state": tx.init(params), "ema": jax.tree.map(lambda p: p.astype(jnp.float32), params)}
    return init


def layout(cfg: DiTConfig, tx: optax.GradientTransformation, mesh, seed: int = 0, offload=()):
    """(graphdef, abstract state, state shardings); the param-shaped tensors of the `offload` parts in pinned host
    memory (cosmos_jax/offload.py)."""
    graphdef, param_sh, buffer_sh = _model_layout(cfg, mesh)
    with sharding.activate(mesh):
        abstract = jax.eval_shape(_init_fn(cfg, tx, seed))
    replicated = NamedSharding(mesh, P())
    opt_sh = optax.tree_utils.tree_map_params(tx, lambda _, s: s, abstract["opt_state"], param_sh,
                                              transform_non_params=lambda _: replicated)
    shardings = {"step": replicated, "params": param_sh, "buffers": buffer_sh, "opt_state": opt_sh,
                 "ema": param_sh}
    if offload:
        shardings = offload_lib.shardings(shardings, jax.tree.structure(abstract["params"]), offload)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    return graphdef, abstract, shardings


def create(cfg: DiTConfig, tx: optax.GradientTransformation, mesh, shardings, seed: int = 0) -> State:
    """A freshly initialised state, created sharded. With parts in host memory (config.offload) each part of the
    state is made by its own computation (the same values: same init, same seed), so the device never holds more
    than the params and one part (the 7B's whole fp32 state would be 108 GiB at once)."""
    init = _init_fn(cfg, tx, seed)
    with sharding.activate(mesh):
        hosted = any(getattr(s, "memory_kind", None) == offload_lib.HOST for s in jax.tree.leaves(shardings))
        if not hosted:
            return jax.jit(init, out_shardings=shardings)()
        return {name: jax.jit(lambda name=name: init()[name], out_shardings=sh)()
                for name, sh in shardings.items()}


def with_weights(state: State, params: dict, buffers: dict, shardings) -> State:
    """The state with base weights loaded (a new job): params and buffers replaced where given, the EMA restarted
    from the params (with LoRA the loaded base is frozen in `buffers`; adapters keep their initialisation)."""
    def put(old, new, sh):
        flat_new, flat_sh = tree.flat(new), tree.flat(sh)
        # cast first, place last: every leaf ends on the state's NamedSharding (an eager astype after the
        # placement can leave another sharding type, and jitted callers would compile twice)
        return tree.unflat({p: jax.device_put(jnp.asarray(flat_new[p]).astype(a.dtype), flat_sh[p])
                            if p in flat_new else a for p, a in tree.flat(old).items()})
    out = dict(state)
    out["params"] = put(state["params"], params, shardings["params"])
    out["buffers"] = put(state["buffers"], buffers, shardings["buffers"])
    # A fresh fp32 copy: `astype(float32)` of fp32 params is the same buffer, and the jitted step donates the state
    # (params and EMA sharing a buffer is "Attempt to donate the same buffer twice").
    copy = jax.jit(lambda t: jax.tree.map(lambda a: jnp.copy(a).astype(jnp.float32), t),
                   out_shardings=shardings["ema"])
    out["ema"] = copy(out["params"])
    return out
