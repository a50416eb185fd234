"""Parity with upstream's own network (tests/data/parity: upstream cosmos-predict1 986b31a outputs on random
weights, see its README). The weights go through the same key map and loader as the released checkpoints."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cosmos_jax.diffusion import denoise as dn
from cosmos_jax.diffusion import edm
from cosmos_jax.models import build
from cosmos_jax.weights.dit import load_pt_into
from tests.conftest import tiny_dit_config

V, T = 3, 2


def to_bvthwc(a_BCVT_HW):
    """Upstream [B, C, V*T, H, W] -> ours [B, V, T, H, W, C]."""
    b, c, _, h, w = a_BCVT_HW.shape
    return a_BCVT_HW.reshape(b, c, V, T, h, w).transpose(0, 2, 3, 4, 5, 1)


@pytest.fixture(scope="module")
def loaded(parity_dir):
    cfg = tiny_dit_config()
    model = build.create(cfg, seed=123)
    load_pt_into(model, str(parity_dir / "dit_tiny.pt"))
    io = dict(np.load(parity_dir / "dit_tiny_io.npz"))
    cond = dn.Condition(
        text_BVSE=jnp.asarray(io["crossattn_emb"].reshape(1, V, 512, -1)),
        view_idx_BVT=jnp.asarray(io["view_indices_B_T"].reshape(1, V, T)),
        fps_B=jnp.asarray(io["fps"]),
        frame_repeat_BV=jnp.asarray(io["frame_repeat"]),
        input_mask_BVT=jnp.asarray(io["condition_video_input_mask"][:, 0, :, 0, 0].reshape(1, V, T)),
        padding_mask_BHW=jnp.asarray(io["padding_mask"][:, 0]),
    )
    # The input mask is constant over H, W (per latent frame), which is what our network takes.
    full = io["condition_video_input_mask"]
    assert np.array_equal(full, np.broadcast_to(full[..., :1, :1], full.shape))
    return model, io, cond


def rel(a, b):
    return float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())


def test_network_output_matches_upstream(loaded):
    model, io, c = loaded
    with jax.default_matmul_precision("highest"):
        y = model.net(jnp.asarray(to_bvthwc(io["x"])), jnp.asarray(io["timesteps"]), c.text_BVSE, c.input_mask_BVT,
                      c.view_idx_BVT, c.fps_B, c.frame_repeat_BV, c.padding_mask_BHW)
    assert rel(y, to_bvthwc(io["output"])) <= 1e-5


def test_masking_text_padding_would_break_parity(loaded):
    """Guard against a 'fix' that masks the zero text tokens: upstream gives them softmax mass."""
    model, io, c = loaded
    text = np.asarray(c.text_BVSE).copy()
    text[np.abs(text).sum(-1) == 0] = 1e-3  # perturb only the padding tokens
    with jax.default_matmul_precision("highest"):
        y = model.net(jnp.asarray(to_bvthwc(io["x"])), jnp.asarray(io["timesteps"]), jnp.asarray(text),
                      c.input_mask_BVT, c.view_idx_BVT, c.fps_B, c.frame_repeat_BV, c.padding_mask_BHW)
    assert rel(y, to_bvthwc(io["output"])) > 1e-4


def test_edm_quantities_match_upstream(loaded, parity_dir):
    model, _, _ = loaded
    e = dict(np.load(parity_dir / "dit_tiny_edm.npz"))
    s = jnp.asarray(e["sigmas"])
    assert float(e["sigma_data"]) == edm.SIGMA_DATA
    for name, fn in [("c_skip", edm.c_skip), ("c_out", edm.c_out), ("c_in", edm.c_in), ("c_noise", edm.c_noise),
                     ("loss_weight", edm.loss_weight)]:
        assert np.allclose(np.asarray(fn(s)), e[name], rtol=1e-6, atol=0), name
    assert rel(model.logvar(edm.c_noise(s)), e["logvar"][:, 0]) <= 1e-5


def test_denoise_matches_upstream(loaded, parity_dir):
    model, _, c = loaded
    e = dict(np.load(parity_dir / "dit_tiny_edm.npz"))
    sigma = jnp.asarray(e["denoise_sigma"])
    xt = to_bvthwc(e["denoise_xt"])
    assert np.allclose(xt, to_bvthwc(e["denoise_x0"] + 2.5 * e["denoise_eps"]), atol=1e-5)
    with jax.default_matmul_precision("highest"):
        pred = dn.denoise(model, jnp.asarray(xt), sigma, c)
    assert rel(pred.x0, to_bvthwc(e["denoise_x0_pred"])) <= 1e-5
    assert rel(pred.eps, to_bvthwc(e["denoise_eps_pred"])) <= 1e-5
    assert rel(pred.logvar_B, e["denoise_logvar"][:, 0]) <= 1e-5


def test_intermediates_embedding(loaded, parity_dir):
    """The assembled 24-channel input and RoPE angles, to bisect a mismatch."""
    from cosmos_jax.models import embeddings as emb

    model, io, c = loaded
    inter = dict(np.load(parity_dir / "dit_tiny_intermediates.npz"))
    ang = emb.rope3d_angles(V, T, 4, 4, c.fps_B, model.net.cfg.head_dim, (2.0, 1.0, 1.0))
    assert rel(ang[0], inter["rope_emb_L_1_1_D"][:, 0, 0]) <= 1e-6
    extra = emb.extra_sincos_embedding(V, T, 4, 4, model.net.cfg.model_channels, (1.0, 1.0, 1.0))
    ref = inter["extra_pos_emb_B_T_H_W_D"].reshape(1, -1, model.net.cfg.model_channels)
    assert rel(extra, ref) <= 1e-6
    ts = emb.timestep_sinusoid(jnp.asarray(io["timesteps"]), model.net.cfg.model_channels)
    assert rel(ts, inter["t_embedder_out__0"]) <= 1e-6
