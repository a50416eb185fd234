"""Flax Cosmos-Tokenize1-CV8x8x8 against the PyTorch reference of cosmos_tokenizer_torch.py at a tiny width, through
JIT files traced and converted as the release is made (docs/tokenizer-t5.md §1-§3): fp32 parity, chunking, causality,
bf16 files, and one train step on the converted weights (the key table and the converter's strictness:
tests/weights/test_tokenizer.py, tests/converters/test_tokenizer_cli.py)."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from configs import demo
from cosmos_jax.models import cosmos_tokenizer as ct
from cosmos_jax.models import tokenizer as tok
from cosmos_jax.weights import tokenizer as tokenizer_weights
from tests.models.cosmos_tokenizer_torch import write_release

ARCH = dict(channels=8)  # widths 16, 32, 32; everything else as released
TINY = ct.Cosmos8x8x8Config.release(**ARCH, dtype="float32", attn_query_chunk=6)  # 16 tokens: padded query blocks


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def to_torch(x_NTHWC):
    return torch.from_numpy(np.asarray(x_NTHWC, np.float32)).permute(0, 4, 1, 2, 3).contiguous()


def to_jax(x_NCTHW):
    return np.asarray(x_NCTHW.detach().permute(0, 2, 3, 4, 1))


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("cosmos_tok")
    write_release(root / "release", TINY)
    summary = tokenizer_weights.convert(str(root / "release"), str(root / "converted"), TINY)
    jits = {s: torch.jit.load(str(root / "release" / f)) for s, f in tokenizer_weights.JIT_FILES.items()}
    _, enc, dec, mean, std = tokenizer_weights.load(str(root / "converted"), "float32",
                                                    attn_query_chunk=TINY.attn_query_chunk)
    return dict(root=root, summary=summary, jit=jits, enc=enc, dec=dec, mean=mean, std=std)


def test_converter_summary_and_meta(release):
    s = release["summary"]
    assert (s["encoder_tensors"], s["decoder_tensors"], s["dropped"], s["mean_std"]) == (138, 172, 5, "16x16")
    meta = json.loads((release["root"] / "converted" / "meta.json").read_text())
    assert meta["config"]["channels"] == 8 and meta["format"] == tokenizer_weights.MARKER.format
    assert meta["dtypes"] == ["float32"]


def test_fp32_parity_and_causality(release):
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (1, 17, 32, 32, 3)).astype(np.float32)
    x2 = np.concatenate([x, x], 0)
    x2[1, 9:] = rng.uniform(-1, 1, x2[1, 9:].shape)  # sample 1: frames 9.. changed
    with torch.no_grad():
        want = release["jit"]["encoder"](to_torch(x2))
    assert isinstance(want, tuple) and want[1][0].shape == (1,)  # (latent, (tensor([0.]), tensor([0.])))
    z = np.asarray(release["enc"](jnp.asarray(x2)))
    assert z.shape == (2, 3, 4, 4, 16)
    err_enc = rel_err(z, to_jax(want[0]))
    assert err_enc <= 1e-4
    np.testing.assert_array_equal(z[1, :2], z[0, :2])  # latent j depends only on frames <= 8j
    assert not np.allclose(z[1, 2], z[0, 2])
    zd = np.stack([z[0], z[0]])
    zd[1, 2] += 1.0  # decoder: frames <= 8 depend only on latents 0, 1
    with torch.no_grad():
        want_dec = to_jax(release["jit"]["decoder"](to_torch(zd)))
    y = np.asarray(release["dec"](jnp.asarray(zd)))
    assert y.shape == (2, 17, 32, 32, 3)
    err_dec = rel_err(y, want_dec)
    assert err_dec <= 1e-4
    np.testing.assert_array_equal(y[1, :9], y[0, :9])
    assert not np.allclose(y[1, 9:], y[0, 9:])
    print(f"fp32 parity: encoder {err_enc:.2e}, decoder {err_dec:.2e}")


def cosmos_config(checkpoint_dir, dtype="float32", chunk=9, size=(32, 32)):
    c = demo.get_config()
    c.tokenizer.update(dict(name="cosmos", checkpoint_dir=str(checkpoint_dir), pixel_chunk_duration=chunk))
    if dtype:
        c.tokenizer.dtype = dtype
    c.data.num_frames, c.data.video_size = chunk, size
    return c


def test_tokenizer_two_chunks_matches_torch(release):
    t = tokenizer_weights.from_config(cosmos_config(release["root"] / "converted"))
    assert t.latent_chunk == 2 and t.mean_CT.shape == (16, 2)
    video = np.random.default_rng(1).integers(0, 256, (1, 2, 18, 32, 32, 3), dtype=np.uint8)  # 2 views x 2 chunks
    z = np.asarray(t.encode(jnp.asarray(video)))
    assert z.shape == (1, 2, 4, 4, 4, 16)
    chunks = video.reshape(4, 9, 32, 32, 3).astype(np.float32) / 127.5 - 1  # (b v k), independent chunks
    mean = release["mean"][:, :2].T[None, :, None, None]
    std = release["std"][:, :2].T[None, :, None, None]
    with torch.no_grad():
        raw = to_jax(release["jit"]["encoder"](to_torch(chunks))[0])
        err_enc = rel_err(z, ((raw - mean) / std * 0.5).reshape(1, 2, 4, 4, 4, 16))
        back = to_jax(release["jit"]["decoder"](to_torch(raw)))
    assert err_enc <= 1e-4
    got_back = np.asarray(t.decode_raw(jnp.asarray(z.reshape(4, 2, 4, 4, 16) / 0.5 * std + mean)))
    err_dec = rel_err(got_back, back)
    assert err_dec <= 1e-4
    pixels = np.asarray(t.decode(jnp.asarray(z)))
    want_px = np.asarray(tok.unit_to_pixels(jnp.asarray(back))).reshape(pixels.shape)
    assert pixels.dtype == np.uint8 and np.abs(pixels.astype(int) - want_px).max() <= 1
    print(f"2-chunk parity: encode {err_enc:.2e}, decode {err_dec:.2e}")


def test_bf16_release_files_run_in_bf16_by_default(release, tmp_path):
    """The release's JIT weights are bf16 and upstream runs them in bf16: dtypes kept, `tokenizer.dtype` bf16."""
    import shutil

    src = release["root"] / "release"
    for f in tokenizer_weights.JIT_FILES.values():
        torch.jit.save(torch.jit.load(str(src / f)).to(torch.bfloat16), str(tmp_path / f))
    shutil.copy(src / "mean_std.pt", tmp_path / "mean_std.pt")
    assert tokenizer_weights.convert(str(tmp_path), str(tmp_path / "out"), TINY)["dtypes"] == "bfloat16"
    c = cosmos_config(tmp_path / "out", dtype=None)
    assert c.tokenizer.dtype == "bfloat16"  # configs/base.py default
    t = tokenizer_weights.from_config(c)
    _, enc, _, _, _ = tokenizer_weights.load(str(tmp_path / "out"), "bfloat16")
    w = torch.jit.load(str(tmp_path / "encoder.jit")).state_dict()["encoder.conv_in.0.conv3d.weight"]
    assert enc.conv_in[0].kernel[...].dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(enc.conv_in[0].kernel[...], np.float32),
                                  w.float().numpy().transpose(2, 3, 4, 1, 0))
    x = np.random.default_rng(2).uniform(-1, 1, (1, 9, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        want = to_jax(release["jit"]["encoder"](to_torch(x))[0])
    err = rel_err(t.encode_raw(jnp.asarray(x)), want)
    assert err < 3e-2
    print(f"bf16 weights and compute vs fp32 torch: encoder {err:.2e}")


def test_train_step_runs_on_the_cosmos_tokenizer(release):
    from cosmos_jax import optim, sharding
    from cosmos_jax import step as step_lib
    from cosmos_jax import train_state as ts
    from cosmos_jax.models import build

    c = cosmos_config(release["root"] / "converted", size=(16, 16))
    c.model.update(dict(model_channels=32, num_blocks=1, num_heads=2, crossattn_emb_channels=8, adaln_lora_dim=8))
    cfg, tx = build.dit_config(c), optim.make(c)
    mesh = sharding.make_mesh(c.mesh, devices=jax.devices()[:1])
    graphdef, _, shardings = ts.layout(cfg, tx, mesh)
    state = ts.create(cfg, tx, mesh, shardings)
    rng = np.random.default_rng(0)
    batch = {"video": jnp.asarray(rng.integers(0, 256, (1, 1, 3, 9, 16, 16, 3)), jnp.uint8),
             "text": jnp.asarray(rng.standard_normal((1, 1, 3, 512, 8)), jnp.float32),
             "view_idx": jnp.asarray([[[0, 1, 2]]], jnp.int32), "fps": jnp.full((1, 1), 10.0),
             "frame_repeat": jnp.zeros((1, 1, 3))}
    step = jax.jit(functools.partial(step_lib.train_step, graphdef=graphdef, tx_parts=optim.parts(c),
                                     cfg=step_lib.StepConfig.from_config(c),
                                     tokenizer=tokenizer_weights.from_config(c)))
    new, metrics = step(state, batch, jax.random.key(0))
    assert np.isfinite(float(metrics["loss"])) and int(new["step"]) == 1
