"""T5 weights: the HF key table, strict HF loading (missing, unexpected, mis-shaped, tied copies), our state dicts."""

import numpy as np
import pytest

from cosmos_jax.models import t5
from cosmos_jax.weights import t5 as t5_weights
from tests.models.test_t5 import TINY, _hf_model

pytest.importorskip("torch")
pytest.importorskip("transformers")


def test_hf_key_table_and_11b_config():
    cfg = t5.T5Config.t5_11b()
    assert (cfg.d_model, cfg.d_kv, cfg.d_ff, cfg.num_layers, cfg.num_heads, cfg.vocab_size) == \
        (1024, 128, 65536, 24, 128, 32128)
    table = t5_weights.hf_key_map(cfg)
    assert len(table) == 195  # docs/tokenizer-t5.md §5.3: 195 unique encoder tensors
    shapes = t5_weights.shapes(cfg)
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
        t5_weights.from_hf_state_dict(t5.abstract(cfg), bad)
    msg = str(e.value)
    assert "encoder.block.1.layer.0.SelfAttention.k.weight" in msg  # missing
    assert "encoder.block.0.layer.0.SelfAttention.extra.weight" in msg  # unexpected
    assert "encoder.block.1.layer.1.DenseReluDense.wo.weight" in msg  # mis-shaped

    with pytest.raises(ValueError, match="decoder.block.0"):  # a full checkpoint needs the ignore list
        t5_weights.from_hf_state_dict(t5.abstract(cfg), {**sd, "decoder.block.0.x.weight": np.zeros(1)})
    t5_weights.from_hf_state_dict(t5.abstract(cfg), {**sd, "decoder.block.0.x.weight": np.zeros(1), "lm_head.weight":
                                              np.zeros(1)}, ignore_prefixes=t5_weights.FULL_CHECKPOINT_IGNORE)

    only_alias = {k: v for k, v in sd.items() if k != "shared.weight"}  # the tied copy stands in for shared
    m = t5_weights.from_hf_state_dict(t5.abstract(cfg), only_alias)
    np.testing.assert_array_equal(np.asarray(m.shared.embedding[...]), sd["shared.weight"])
    untied = {**sd, "encoder.embed_tokens.weight": sd["shared.weight"] + 1}
    with pytest.raises(ValueError, match="tied"):
        t5_weights.from_hf_state_dict(t5.abstract(cfg), untied)


def test_state_dict_round_trip():
    sd = t5_weights.random_state_dict(t5.T5Config(**TINY), seed=3)
    assert sd["shared.embedding"].std() > 0.5 and np.all(sd["final_norm.scale"] == 1)
    m2 = t5_weights.load_state_dict(t5.abstract(t5.T5Config(**TINY)), sd)
    for k, v in t5_weights.state_dict(m2).items():
        np.testing.assert_array_equal(v, sd[k])
    with pytest.raises(ValueError, match="final_norm.scale"):
        t5_weights.load_state_dict(m2, {k: v for k, v in sd.items() if k != "final_norm.scale"})
