"""Build the network from a config: real (initialised) or abstract (shapes only), and flat-tree helpers."""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from cosmos_jax.models.dit import DiffusionNet, DiTConfig
from cosmos_jax.weights import tree


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


def _base_vars(model: nnx.Module):
    """Every Param and Buffer but LoRA adapters (the upstream network's tensors)."""
    return tree.flat_vars(model, exclude=(nnx.LoRAParam,)).items()


def flat_shapes(model: nnx.Module) -> dict[tuple[str, ...], tuple[int, ...]]:
    """{path: shape} of every Param and Buffer (LoRA adapters excluded)."""
    return {p: tuple(v.get_value().shape) for p, v in _base_vars(model)}


def flat_arrays(model: nnx.Module) -> dict[tuple[str, ...], np.ndarray]:
    """{path: numpy array} of every Param and Buffer (LoRA adapters excluded)."""
    return {p: np.asarray(jax.device_get(v.get_value())) for p, v in _base_vars(model)}


def load_flat(model: nnx.Module, arrays: dict[tuple[str, ...], np.ndarray]) -> None:
    """Write {path: array} into the model in place (paths and shapes must match exactly; LoRA adapters keep their
    values)."""
    tree.fill(model, arrays, "DiT weights", exclude=(nnx.LoRAParam,))
