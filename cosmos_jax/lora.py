"""LoRA adapters: their scale and merging them into the base weights.

Training with `config.lora.rank > 0` adds `nnx.LoRAParam` adapters (lora_a [in, r], lora_b [r, out]) to the block
linears named in `config.lora.targets` (upstream names: to_q, to_k, to_v, to_out, layer1, layer2, or longer
dotted suffixes such as blocks.0.block.attn.to_q for the self-attention only); the base stays frozen in the compute
dtype; only the adapters are optimised and averaged by the EMA. Exports (cosmos_jax/weights/export.py): the merged
network as upstream `.pt` (W' = W + (alpha/r) A B), and the adapters alone in PEFT's layout.
"""

from __future__ import annotations

import numpy as np

LORA_LEAVES = ("lora_a", "lora_b")


def scale(rank: int, alpha: float) -> float:
    """The adapters' scale alpha / rank (the forward's, the merge's and the exports'); 0 without LoRA."""
    return float(alpha) / rank if rank else 0.0


def has_lora(flat_tree: dict) -> bool:
    return any(p[-1] in LORA_LEAVES for p in flat_tree)


def merge(flat_tree: dict[tuple[str, ...], np.ndarray], scale: float) -> dict[tuple[str, ...], np.ndarray]:
    """{path: array} with adapters folded into their kernels (stacked block axes kept) and removed."""
    out = {p: np.asarray(a) for p, a in flat_tree.items() if p[-1] not in LORA_LEAVES}
    for p, a in flat_tree.items():
        if p[-1] != "lora_a":
            continue
        b = np.asarray(flat_tree[p[:-1] + ("lora_b",)], np.float32)
        kernel = p[:-1] + ("kernel",)
        delta = np.einsum("...ir,...ro->...io", np.asarray(a, np.float32), b) * scale
        out[kernel] = (np.asarray(out[kernel], np.float32) + delta).astype(out[kernel].dtype)
    return out
