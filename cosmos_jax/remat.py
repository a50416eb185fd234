"""Rematerialisation policies for the transformer block, chosen by name in `config.model.remat`.

  none  keep every activation (fastest, most memory)
  full  keep only the block input; recompute the block in the backward pass (upstream's FSDP checkpoint_wrapper)
  dots  keep the outputs of matmuls without batch dimensions (projections, MLP); recompute the rest
  attention_outside  structural: recompute everything but the self-attention kernel, which stays outside
        `jax.checkpoint` (naming its output in a policy does not stop cuDNN attention from being recomputed:
        docs/performance.md); implemented by TransformerBlock(remat_around_attention=True)
"""

from __future__ import annotations

from collections.abc import Callable

import jax

POLICIES = ("none", "full", "dots", "attention_outside")


def remat_block(body: Callable, policy: str) -> Callable:
    """Wrap a scan body `(carry, xs) -> (carry, ys)` with the named policy."""
    if policy in ("none", "attention_outside"):  # the latter is structural, inside the block
        return body
    if policy == "full":
        return jax.checkpoint(body, prevent_cse=False)
    if policy == "dots":
        return jax.checkpoint(body, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
                              prevent_cse=False)
    raise ValueError(f"model.remat={policy!r}: expected one of {POLICIES}")
