"""Model FLOPs of the training step and the MFU that the train loop logs and the benchmarks report.

Accounting (docs of the benchmark format, `bench/README.md`): a full fine-tune costs 3 x the forward (forward,
input gradients, weight gradients); with LoRA the frozen weights need no weight gradients, so the linears cost
2 x their forward while attention still costs 3 x. Attention is counted in full (non-causal). MFU = model FLOPs /
step time / (peak x devices), with the measured bf16 dense ceiling of a Hopper card (790 TFLOP/s).
"""

from __future__ import annotations

HOPPER_PEAK = 790e12  # measured bf16 GEMM ceiling of one H100 / H200 (8192^3)


def model_flops_per_sample(m, views: int, t: int, h: int, w: int, text_tokens: int = 512) -> float:
    """Training model FLOPs of one sample of `views` views with [t, h, w] latents (m: a DiTConfig)."""
    d, nb, c = m.model_channels, m.num_blocks, m.crossattn_emb_channels
    p = m.patch_spatial
    per_view = (t // m.patch_temporal) * (h // p) * (w // p)
    tokens = views * per_view
    hidden = int(d * m.mlp_ratio)
    linears = 2 * tokens * (4 * d * d + 2 * d * d + 2 * d * hidden) * nb  # self qkvo, cross q/o, MLP
    text_kv = 2 * views * text_tokens * 2 * c * d * nb
    self_attn = 4 * tokens * tokens * d * nb
    cross_attn = 4 * tokens * text_tokens * d * nb
    patch = 2 * tokens * (m.patch_in_features + m.patch_out_features) * d
    if getattr(m, "lora_rank", 0):
        return 3.0 * (self_attn + cross_attn) + 2.0 * (linears + text_kv + patch)
    return 3.0 * (linears + text_kv + self_attn + cross_attn + patch)


def step_flops(cfg, config, batch: int) -> float:
    """Model FLOPs of one optimizer step of an experiment config (all micro-batches)."""
    _, t, h, w = config.latent_shape
    views = config.data.sample_n_views or len(config.data.view_keys)
    return model_flops_per_sample(cfg, views, t, h, w, int(config.data.text_tokens)) * batch * config.grad_accum


def peak_flops(device) -> float | None:
    """bf16 dense peak of one device; None where unknown (CPU), so no MFU is claimed there."""
    kind = getattr(device, "device_kind", "")
    return HOPPER_PEAK if any(k in kind for k in ("H100", "H200", "H800", "GH200")) else None
