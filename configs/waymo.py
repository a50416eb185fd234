"""The seed's experiments: 7B Single2MultiView Sample-AV post-training on Waymo.

  --config=configs/waymo.py        text2world_singletomultiview_7b_example_waymo (default, `t2w`)
  --config=configs/waymo.py:v2w    video2world_singletomultiview_7b_example_waymo

Every value follows docs/upstream.md §1.3-1.4; the two variants differ only in the job group and name, the base
checkpoint and the condition location.
"""

from __future__ import annotations

from configs import base

VARIANTS = {
    "t2w": dict(group="diffusion_text2world", name="text2world_singletomultiview_7b_example_waymo",
                load_path="checkpoints/Cosmos-Predict1-7B-Video2World-Sample-AV-Single2MultiView/t2w_model_orbax",
                condition_location="first_cam", random_n_max=0),
    "v2w": dict(group="diffusion_video2world", name="video2world_singletomultiview_7b_example_waymo",
                load_path="checkpoints/Cosmos-Predict1-7B-Video2World-Sample-AV-Single2MultiView/v2w_model_orbax",
                condition_location="first_cam_and_random_n", random_n_max=2),
}


def get_config(arg: str | None = None):
    variant = arg or "t2w"
    if variant not in VARIANTS:
        raise ValueError(f"configs/waymo.py:{variant}: expected one of {sorted(VARIANTS)}")
    v = VARIANTS[variant]
    c = base.get_config()
    c.variant = variant
    c.job.group, c.job.name = v["group"], v["name"]
    c.checkpoint.load_path = v["load_path"]
    c.conditioning.condition_location = v["condition_location"]
    c.conditioning.first_random_n_num_condition_t_max = v["random_n_max"]
    return base.derive(c)
