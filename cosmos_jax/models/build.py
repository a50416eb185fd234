"""Build the network from a config: real (initialised) or abstract (shapes only)."""

from __future__ import annotations

from flax import nnx

from cosmos_jax.models.dit import DiffusionNet, DiTConfig


def dit_config(config) -> DiTConfig:
    """DiTConfig from a full experiment config (`config.model` plus the top-level `remat`)."""
    model = dict(config.model.items())
    lora = config.get("lora", None)
    extra = {}
    if lora is not None and int(lora.get("rank", 0)) > 0:
        if not lora.get("targets"):
            raise ValueError("config.lora.rank > 0 needs config.lora.targets (upstream names, e.g. to_q, layer1)")
        extra = {"lora_rank": int(lora.rank), "lora_alpha": float(lora.alpha or lora.rank),
                 "lora_targets": tuple(lora.targets)}
    return DiTConfig.from_config({**model, "remat": config.get("remat", "none"), **extra})


def create(cfg: DiTConfig, seed: int = 0) -> DiffusionNet:
    """An initialised network on the default device, without any mesh (tests, CPU tools)."""
    with nnx.use_eager_sharding(False):
        return DiffusionNet(cfg, rngs=nnx.Rngs(seed))


def abstract(cfg: DiTConfig) -> DiffusionNet:
    """The network with ShapeDtypeStructs instead of arrays: no memory, any size."""
    with nnx.use_eager_sharding(False):
        return nnx.eval_shape(lambda: DiffusionNet(cfg, rngs=nnx.Rngs(0)))
