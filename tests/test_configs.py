"""The experiment configs reproduce upstream's values (docs/upstream.md §1.3-1.4)."""

import math

import pytest

from configs import base, demo, waymo
from cosmos_jax.models import build


def test_t2w_values():
    c = waymo.get_config()
    assert c.variant == "t2w"
    assert (c.job.project, c.job.group, c.job.name) == (
        "posttraining", "diffusion_text2world", "text2world_singletomultiview_7b_example_waymo")
    assert c.optim.lr == pytest.approx(2**-14.3) and c.optim.lr == pytest.approx(4.9576e-5, rel=1e-4)
    assert (c.optim.weight_decay, c.optim.b1, c.optim.b2, c.optim.eps) == (0.1, 0.9, 0.99, 1e-10)
    assert (c.optim.warmup_steps, c.optim.f_start, c.optim.f_max, c.optim.f_min) == (2500, 1e-6, 1.0, 1.0)
    assert c.optim.clip_norm == 1.0 and c.optim.force_finite
    assert c.ema.s == 0.1 and c.max_iter == 2000 and c.seed == 0 and c.batch_size == 0 and c.grad_accum == 1
    assert c.checkpoint.save_iter == 200
    assert "t2w_model" in c.checkpoint.load_path
    assert (c.diffusion.sigma_data, c.diffusion.p_mean, c.diffusion.p_std) == (0.5, 0.0, 1.0)
    assert (c.diffusion.sigma_min, c.diffusion.sigma_max) == (0.0002, 80.0)
    cd = c.conditioning
    assert cd.condition_location == "first_cam" and cd.first_random_n_num_condition_t_max == 0
    assert (cd.augment_sigma_p_mean, cd.augment_sigma_p_std, cd.augment_sigma_multiplier) == (-3.0, 2.0, 1.0)
    assert cd.text_dropout_rate == 0.2
    d = c.data
    assert d.view_keys == list(base.VIEW_KEYS) and d.view_keys[0] == "pinhole_front"
    assert (d.num_frames, tuple(d.video_size), d.sample_n_views, d.load_mv_emb, d.sequence_interval) == (
        57, (576, 1024), 3, False, 1)
    assert {int(k): v for k, v in d.caption_view_idx_map.items()} == {0: 0, 1: 1, 2: 2, 3: 4, 4: 5}
    assert c.tokenizer.pixel_chunk_duration == 57
    assert tuple(c.latent_shape) == (16, 8, 72, 128) and c.tokens_per_view == 18432
    assert tuple(map(tuple, c.mesh)) == (("data", 1), ("fsdp", -1), ("context", 1))
    m = build.dit_config(c)
    assert (m.model_channels, m.num_blocks, m.num_heads, m.adaln_lora_dim, m.crossattn_emb_channels) == (
        4096, 28, 32, 256, 1024)
    assert (m.n_views_emb, m.view_condition_dim, m.rope_t_extrapolation_ratio) == (7, 6, 2.0)
    assert m.patch_in_features == 96 and m.remat == "full"


def test_v2w_differs_only_where_upstream_does():
    t, v = waymo.get_config("t2w"), waymo.get_config("v2w")
    assert v.job.group == "diffusion_video2world" and v.job.name == "video2world_singletomultiview_7b_example_waymo"
    assert v.conditioning.condition_location == "first_cam_and_random_n"
    assert v.conditioning.first_random_n_num_condition_t_max == 2
    assert "v2w_model" in v.checkpoint.load_path
    diff = {k for k in t.keys() if t[k] != v[k]}
    assert diff == {"variant", "job", "checkpoint", "conditioning"}
    with pytest.raises(ValueError, match="waymo.py:x2w"):
        waymo.get_config("x2w")


def test_demo_is_tiny_and_consistent():
    c = demo.get_config()
    m = build.dit_config(c)
    assert m.model_channels <= 128 and m.num_blocks <= 3 and c.tokenizer.name == "haar"
    assert c.model.model_channels % c.model.num_heads == 0
    assert tuple(c.latent_shape) == (16, 2, 8, 12)
    assert math.isfinite(c.optim.lr)


def test_unknown_model_key_is_refused():
    c = demo.get_config()
    c.model.modle_channels = 3
    with pytest.raises(ValueError, match="modle_channels"):
        build.dit_config(c)


def test_one_gpu_full_fine_tune_config():
    from configs import waymo_1gpu
    from cosmos_jax import config_check

    c = waymo_1gpu.get_config("v2w")
    assert c.offload == ("opt_state", "ema") and not c.checkpoint.async_save and c.lora.rank == 0
    assert c.offload_overlap and c.remat == "full" and c.offload_prefetch == 0
    assert c.conditioning.condition_location == "first_cam_and_random_n"
    config_check.check(c, 1)
    c.grad_accum = 2
    with pytest.raises(config_check.ConfigError, match="config.offload_overlap=True needs grad_accum=1"):
        config_check.check(c, 1)
    c.grad_accum = 1
    c.model.scan_blocks = False
    with pytest.raises(config_check.ConfigError, match="config.offload needs model.scan_blocks=True"):
        config_check.check(c, 1)


def test_rig_learning_config():
    from configs import rig_learning
    from cosmos_jax import config_check

    c = rig_learning.get_config()
    config_check.check(c, 1)
    assert c.latent_shape == (16, 3, 24, 40) and c.data.sample_n_views == 3 and c.model.num_blocks == 12
    assert c.model.adaln_lora_dim == base.model_7b().adaln_lora_dim and c.model.n_views_emb == 7  # 7B features on
