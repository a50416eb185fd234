"""A tiny Single2MultiView model on the synthetic camera rig: the CPU demo and the tests.

Every feature of the 7B network is on (RoPE t-ratio 2, per-block sin/cos, AdaLN-LoRA, 7 view embeddings, repeat-frame
embedding, per-view cross-attention); only the sizes shrink.
"""

from __future__ import annotations

from configs import base


def get_config(arg: str | None = None):
    c = base.get_config()
    c.variant = arg or "t2w"
    c.job.group, c.job.name = "demo", "demo_single2multiview"
    c.data.dataset_dir = "datasets/synthetic"
    c.data.num_frames = 9
    c.data.video_size = (64, 96)
    c.data.text_tokens = 512
    c.model.update(dict(model_channels=96, num_blocks=3, num_heads=2, crossattn_emb_channels=32,
                        adaln_lora_dim=16, dtype="float32"))
    c.remat = "none"
    c.tokenizer.name = "haar"
    c.tokenizer.pixel_chunk_duration = c.data.num_frames
    c.conditioning.condition_location = "first_cam" if c.variant == "t2w" else "first_cam_and_random_n"
    c.conditioning.first_random_n_num_condition_t_max = 0 if c.variant == "t2w" else 2
    c.batch_size = 4
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 20
    c.checkpoint.save_iter = 400
    c.checkpoint.max_to_keep = 2
    c.max_iter = 800
    c.log_every = 10
    c.samples.guidance = 3.0
    return base.derive(c)
