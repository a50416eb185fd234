"""T5 encoder: fp32 parity with transformers' T5EncoderModel and upstream's embedding procedure (its weights:
tests/weights/test_t5.py)."""

import io

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cosmos_jax.models import t5
from cosmos_jax.weights import t5 as t5_weights

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TINY = dict(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)


def _hf_model(feed_forward_proj="relu", seed=0):
    """A tiny random HF encoder with every tensor (layer norms included) randomised."""
    hc = transformers.T5Config(**TINY, feed_forward_proj=feed_forward_proj)
    torch.manual_seed(seed)
    model = transformers.T5EncoderModel(hc).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
    sd = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    return model, sd


def _padded_batch(lengths=(150, 97, 5), seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, TINY["vocab_size"], (len(lengths), max(lengths)))
    mask = np.zeros_like(ids)
    for b, n in enumerate(lengths):
        ids[b, n:] = t5.PAD_ID
        mask[b, :n] = 1
    return ids, mask


@pytest.mark.parametrize("ffn", ["relu", "gated-gelu"])
def test_parity_with_hf_t5_encoder(ffn):
    hf, sd = _hf_model(ffn)
    model = t5_weights.from_hf_state_dict(t5.abstract(t5.T5Config(**TINY, feed_forward_proj=ffn)), sd)
    ids, mask = _padded_batch()  # lengths past 128 exercise the log-spaced and clipped buckets
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    out = np.asarray(model(jnp.asarray(ids, jnp.int32), jnp.asarray(mask)))
    rel = np.abs(out - ref).max() / np.abs(ref).max()
    assert rel <= 1e-5, rel


def test_relative_position_bucket_matches_hf():
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = np.arange(-1500, 1500)
    ref = T5Attention._relative_position_bucket(torch.tensor(rel), bidirectional=True, num_buckets=32,
                                                max_distance=128).numpy()
    np.testing.assert_array_equal(t5.relative_position_bucket(rel, 32, 128), ref)


def _spm(texts, vocab_size=60):
    spm = pytest.importorskip("sentencepiece")
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=buf, vocab_size=vocab_size,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   hard_vocab_limit=False, num_threads=1, minloglevel=2)
    return spm.SentencePieceProcessor(model_proto=buf.getvalue())


def test_embed_texts_trims_and_zeroes():
    corpus = ["The video is captured from a camera mounted on a car. The camera is facing forward.",
              "A red car overtakes on the left.", "Buildings line the right side of the street."] * 3
    sp = _spm(corpus)
    cfg = t5.T5Config(**{**TINY, "vocab_size": sp.get_piece_size()})
    model = t5_weights.load_state_dict(t5.abstract(cfg), t5_weights.random_state_dict(cfg, seed=1))
    texts = [corpus[0], "A red car.", corpus[2] + " " + corpus[1]]

    ids = t5.tokenize(sp, texts)
    assert [x[-1] for x in ids] == [t5.EOS_ID] * 3 and all(t5.EOS_ID not in x[:-1] for x in ids)
    assert [len(x) for x in ids] == [len(sp.encode(s)) + 1 for s in texts]  # no BOS, one </s>

    embs = t5.embed_texts(model, sp, texts)
    assert [e.shape for e in embs] == [(len(x), cfg.d_model) for x in ids]
    assert all(e.dtype == np.float32 for e in embs)

    # Same values as the encoder on one padded batch (upstream's call), zeroed past each real length.
    pad = 64  # = the bucket of the longest text: no new compilation
    assert max(len(x) for x in ids) <= pad
    padded = t5.encode_ids(model, ids, pad_to=pad)
    for e, x, row in zip(embs, ids, padded, strict=True):
        np.testing.assert_allclose(e, row[: len(x)], rtol=1e-5, atol=1e-6)
        assert np.all(row[len(x):] == 0) and np.all(np.abs(row[: len(x)]).sum(-1) > 0)
    tok, mask = np.zeros((3, pad), np.int32), np.zeros((3, pad), np.int32)
    for r, x in enumerate(ids):
        tok[r, : len(x)], mask[r, : len(x)] = x, 1
    direct = np.asarray(nnx.jit(lambda m, i, a: m(i, a))(model, jnp.asarray(tok), jnp.asarray(mask)))
    assert np.abs(direct[1, len(ids[1]):]).max() > 0  # the raw encoder does produce values at padded positions
    for e, x, row in zip(embs, ids, direct, strict=True):
        np.testing.assert_allclose(e, row[: len(x)], rtol=1e-5, atol=1e-6)

    # Truncation keeps max_length - 1 text tokens and still ends with </s>.
    short = t5.embed_texts(model, sp, [corpus[0]], max_length=8, pad_to=16)[0]
    assert short.shape == (8, cfg.d_model)
    np.testing.assert_array_equal(t5.tokenize(sp, [corpus[0]], max_length=8)[0], ids[0][:7] + [t5.EOS_ID])
