"""Defaults shared by every experiment: the upstream Single2MultiView 7B recipe (docs/upstream.md §1.3).

Experiments (`configs/waymo.py`, `configs/demo.py`) start from `get_config()` and change what differs. Derived
values (latent shape, token count) are computed once here by `derive()`, never typed twice.
"""

from __future__ import annotations

import ml_collections

from cosmos_jax.rig import CAPTION_VIEW_IDX_MAP, VIEW_KEYS  # the camera rig (cosmos_jax/rig.py)


def model_7b() -> ml_collections.ConfigDict:
    """`MultiviewExtensionGeneralDIT` as composed by the 7B Single2MultiView experiments."""
    return ml_collections.ConfigDict(dict(
        model_channels=4096, num_blocks=28, num_heads=32, mlp_ratio=4.0, crossattn_emb_channels=1024,
        adaln_lora_dim=256, patch_spatial=2, patch_temporal=1, in_channels=16, out_channels=16,
        max_img_h=240, max_img_w=240, max_frames=128,
        rope_h_extrapolation_ratio=1.0, rope_w_extrapolation_ratio=1.0, rope_t_extrapolation_ratio=2.0,
        extra_h_extrapolation_ratio=1.0, extra_w_extrapolation_ratio=1.0, extra_t_extrapolation_ratio=1.0,
        n_views_emb=7, view_condition_dim=6, add_repeat_frame_embedding=True, concat_padding_mask=True,
        logvar_channels=128,
        # Execution: compute dtype (params and EMA stay fp32), attention kernel, blocks through lax.scan.
        dtype="bfloat16", attention_impl="auto", scan_blocks=True,
    ))


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.job = ml_collections.ConfigDict(dict(project="posttraining", group="diffusion_text2world", name="debug"))

    c.data = ml_collections.ConfigDict(dict(
        dataset_dir="datasets/waymo", num_frames=57, view_keys=list(VIEW_KEYS), video_size=(576, 1024),
        sample_n_views=3, caption_view_idx_map={str(k): v for k, v in CAPTION_VIEW_IDX_MAP.items()},
        load_mv_emb=False, sequence_interval=1, start_frame_interval=1, on_bad_sample="error", latent_cache="",
        text_tokens=512, num_workers=2,
        val_dataset_dir="",  # held-out windows; default <dataset_dir>/heldout if present, else dataset_dir
    ))
    c.batch_size = 0  # global batch per optimizer micro-step; 0 = one per data-parallel device (upstream: 1 per GPU)
    c.grad_accum = 1
    # Ordered (name, size) pairs; one size may be -1 = the remaining devices.
    c.mesh = (("data", 1), ("fsdp", -1), ("context", 1))

    c.model = model_7b()
    c.remat = "full"  # upstream wraps every block in an activation checkpoint
    # State parts kept in pinned host memory and streamed through the update one block at a time:
    # () or a tuple of "opt_state" (Adam moments), "ema" (cosmos_jax/offload.py).
    c.offload = ()
    # True: each step's update of the offloaded parts runs inside the next step's forward pass, block by block, so
    # that the host copies overlap the blocks' compute (cosmos_jax/offload_overlap.py; grad_accum 1, full fine-tune;
    # the blocks are rematerialised in full, or with remat attention_outside around the kept attention).
    c.offload_overlap = False
    # With offload_overlap: blocks whose moments and EMA are fetched ahead (1, or 2: each block's copies get two
    # blocks of compute to hide behind, for one more block of them on the device; 0: each block's own, read at the
    # top of its iteration, so that its write-back can run under its compute).
    c.offload_prefetch = 1
    # With offload_overlap and prefetch >= 1 (remat full): the fetch of block i + prefetch ordered after block i's
    # self-attention, so that block i's write-backs run under the attention and the fetch under the rest.
    c.offload_midblock_fetch = False
    c.tokenizer = ml_collections.ConfigDict(dict(
        name="cosmos", checkpoint_dir="checkpoints/Cosmos-Tokenize1-CV8x8x8-720p", pixel_chunk_duration=57,
        latent_channels=16, temporal_compression=8, spatial_compression=8,
        dtype="bfloat16",  # compute dtype of the Flax tokenizer (upstream casts the JIT models to bf16)
    ))
    c.diffusion = ml_collections.ConfigDict(dict(
        sigma_data=0.5, p_mean=0.0, p_std=1.0, sigma_min=0.0002, sigma_max=80.0, loss_add_logvar=True,
    ))
    c.conditioning = ml_collections.ConfigDict(dict(
        condition_location="first_cam", first_random_n_num_condition_t_max=0,
        apply_corruption_to_condition_region="noise_with_sigma",
        augment_sigma_p_mean=-3.0, augment_sigma_p_std=2.0, augment_sigma_multiplier=1.0,
        text_dropout_rate=0.2, fps=10.0,
    ))
    c.optim = ml_collections.ConfigDict(dict(
        lr=2**-14.3, weight_decay=0.1, b1=0.9, b2=0.99, eps=1e-10,
        warmup_steps=2500, f_start=1e-6, f_max=1.0, f_min=1.0, cycle_length=int(1e13),
        clip_norm=1.0, force_finite=True,
    ))
    c.ema = ml_collections.ConfigDict(dict(enabled=True, s=0.1))
    # Validation samples at each save: view extension of a held-out clip from the EMA weights. val_at_start: the
    # validation loss of step 0 too (the curve's baseline; at 7B one more compile and 12 forwards, about a minute);
    # samples_at_start: samples (and their scores) at step 0 as well; quality_frames: frames of the samples scored
    # for cross-view consistency (cosmos_jax/quality.py).
    c.samples = ml_collections.ConfigDict(dict(enabled=True, num_steps=35, guidance=7.0, val_at_start=True,
                                               samples_at_start=False, quality_frames=4))
    c.lora = ml_collections.ConfigDict(dict(rank=0, alpha=0.0, targets=()))  # targets: upstream names
    # max_to_keep: Orbax checkpoints kept; export_max_to_keep: `.pt` exports kept (0 = max_to_keep; 7B: 43 GB each).
    # async_save: train on while a checkpoint is written (Orbax first copies the device-resident state to host
    # memory); concurrent_gb: bytes Orbax writes or reads at once (bounds its host buffers).
    c.checkpoint = ml_collections.ConfigDict(dict(
        save_iter=200, max_to_keep=3, export_pt=True, export_max_to_keep=0, load_path="", async_save=True,
        concurrent_gb=8,
    ))
    c.max_iter = 2000
    c.log_every = 10
    c.seed = 0
    return c


def derive(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Fill derived values: latent shape per view and token count."""
    t_lat = (c.data.num_frames - 1) // c.tokenizer.temporal_compression + 1
    h_lat = c.data.video_size[0] // c.tokenizer.spatial_compression
    w_lat = c.data.video_size[1] // c.tokenizer.spatial_compression
    c.latent_shape = (c.model.in_channels, t_lat, h_lat, w_lat)  # per view, upstream [C, T, H, W]
    p = c.model.patch_spatial
    c.tokens_per_view = (t_lat // c.model.patch_temporal) * (h_lat // p) * (w_lat // p)
    return c
