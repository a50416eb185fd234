"""Does post-training learn the other cameras? A mid-size network with every 7B feature on, trained on the
synthetic rig at reduced size, scored at every save (cross-view consistency and fidelity, cosmos_jax/quality.py).

    python -m cosmos_jax.data.synthetic --out datasets/rig_learning --clips 64 --heldout 4 --frames 20 --scale 2.2222222
    python -m cosmos_jax.train --config=configs/rig_learning.py
    python -m cosmos_jax.evaluate --checkpoint checkpoints/posttraining/quality/rig_learning --dataset \
        datasets/rig_learning --clips 4

The seed's recipe (EDM, first_cam view extension, AdaLN-LoRA, RoPE, 3 sampled views, text dropout, condition
augmentation, power EMA) with a learning rate and warm-up suited to a from-scratch run of a few thousand steps.
12 blocks x 1024 channels: the third learning run's network (README, "Measure what the generated cameras are worth"),
which takes 1.4 x the steps a second of 12 x 1536 and on 64 clips reached cross-view matches on the rig's epipolar
lines in 1,500 steps.
"""

from __future__ import annotations

from configs import base


def get_config(arg: str | None = None):
    c = base.get_config()
    c.variant = arg or "t2w"
    c.job.group, c.job.name = "quality", "rig_learning"
    c.data.dataset_dir = "datasets/rig_learning"
    c.data.num_frames = 17
    c.data.video_size = (192, 320)
    c.data.num_workers = 8
    c.model.update(dict(model_channels=1024, num_blocks=12, num_heads=8))
    c.remat = "none"
    c.tokenizer.name = "haar"
    c.tokenizer.pixel_chunk_duration = c.data.num_frames
    c.batch_size = 8
    c.optim.lr = 2e-4
    c.optim.warmup_steps = 100
    c.max_iter = 3000
    c.checkpoint.save_iter = 500
    c.checkpoint.max_to_keep = 1
    c.checkpoint.export_pt = False
    c.log_every = 50
    c.samples.num_steps = 20
    c.samples.guidance = 3.0
    c.samples.samples_at_start = True  # the scores of the untrained network: what training must improve on
    return base.derive(c)
