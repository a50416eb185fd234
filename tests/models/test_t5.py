"""T5 encoder: fp32 parity with transformers' T5EncoderModel, strict HF loading, and upstream's embedding procedure."""

import io

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cosmos_jax.models import t5
from cosmos_jax.weights import tree

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
    model = t5.from_hf_state_dict(t5.abstract(t5.T5Config(**TINY, feed_forward_proj=ffn)), sd)
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


def test_hf_key_table_and_11b_config():
    cfg = t5.T5Config.t5_11b()
    assert (cfg.d_model, cfg.d_kv, cfg.d_ff, cfg.num_layers, cfg.num_heads, cfg.vocab_size) == \
        (1024, 128, 65536, 24, 128, 32128)
    table = t5.hf_key_map(cfg)
    assert len(table) == 195  # docs/tokenizer-t5.md §5.3: 195 unique encoder tensors
    shapes = {k: tuple(v.get_value().shape) for k, v in tree.flat_vars(t5.abstract(cfg), dotted=True).items()}
    assert sorted(p for p, _ in table.values()) == sorted(shapes)  # one HF tensor per parameter, both ways
    assert shapes["blocks.3.attn.q.kernel"] == (1024, 16384) and table[
        "encoder.block.3.layer.0.SelfAttention.q.weight"] == ("blocks.3.attn.q.kernel", True)
    assert shapes["blocks.0.ffn.wi.kernel"] == (1024, 65536) and shapes["shared.embedding"] == (32128, 1024)
    assert shapes["relative_attention_bias.embedding"] == (32, 128)


def test_from_hf_state_dict_is_strict():
    _, sd = _hf_model()
    cfg = t5.T5Config(**TINY)

    bad = dict(sd)
    del bad["encoder.block.1.layer.0.SelfAttention.k.weight"]
    bad["encoder.block.0.layer.0.SelfAttention.extra.weight"] = np.zeros((2, 2), np.float32)
    bad["encoder.block.1.layer.1.DenseReluDense.wo.weight"] = np.zeros((32, 63), np.float32)
    with pytest.raises(ValueError) as e:
        t5.from_hf_state_dict(t5.abstract(cfg), bad)
    msg = str(e.value)
    assert "encoder.block.1.layer.0.SelfAttention.k.weight" in msg  # missing
    assert "encoder.block.0.layer.0.SelfAttention.extra.weight" in msg  # unexpected
    assert "encoder.block.1.layer.1.DenseReluDense.wo.weight" in msg  # mis-shaped

    with pytest.raises(ValueError, match="decoder.block.0"):  # a full checkpoint needs the ignore list
        t5.from_hf_state_dict(t5.abstract(cfg), {**sd, "decoder.block.0.x.weight": np.zeros(1)})
    t5.from_hf_state_dict(t5.abstract(cfg), {**sd, "decoder.block.0.x.weight": np.zeros(1), "lm_head.weight":
                                              np.zeros(1)}, ignore_prefixes=t5.FULL_CHECKPOINT_IGNORE)

    only_alias = {k: v for k, v in sd.items() if k != "shared.weight"}  # the tied copy stands in for shared
    m = t5.from_hf_state_dict(t5.abstract(cfg), only_alias)
    np.testing.assert_array_equal(np.asarray(m.shared.embedding[...]), sd["shared.weight"])
    untied = {**sd, "encoder.embed_tokens.weight": sd["shared.weight"] + 1}
    with pytest.raises(ValueError, match="tied"):
        t5.from_hf_state_dict(t5.abstract(cfg), untied)


def test_state_dict_round_trip():
    sd = t5.random_state_dict(t5.T5Config(**TINY), seed=3)
    assert sd["shared.embedding"].std() > 0.5 and np.all(sd["final_norm.scale"] == 1)
    m2 = t5.load_state_dict(t5.abstract(t5.T5Config(**TINY)), sd)
    for k, v in t5.state_dict(m2).items():
        np.testing.assert_array_equal(v, sd[k])
    with pytest.raises(ValueError, match="final_norm.scale"):
        t5.load_state_dict(m2, {k: v for k, v in sd.items() if k != "final_norm.scale"})


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
    model = t5.load_state_dict(t5.abstract(cfg), t5.random_state_dict(cfg, seed=1))
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
