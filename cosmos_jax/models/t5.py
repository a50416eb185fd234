"""T5 text encoder (the encoder stack of HF `T5EncoderModel`) in Flax NNX, and upstream's embedding procedure.

Cosmos embeds captions with the encoder of google-t5/t5-11b in fp32 (docs/tokenizer-t5.md §5, docs/data-layout.md §3):
tokenize with truncation to 512 tokens, `</s>` (id 1) appended, no BOS; run the encoder; zero the outputs past the
real length; store each sequence trimmed to its real length (which counts `</s>`).

Forward (HF `modeling_t5.py`, encoder only, eval mode):
  h = shared[input_ids]                                   (no scaling, no absolute positions)
  per block:  h += o(attn(q, k, v of RMSNorm(h)) + bias)  (no 1/sqrt(d) scaling; bias = relative position bias
                                                           of block 0, reused by every block, + padding mask)
              h += wo(act(wi(RMSNorm(h))))                (or wo(act(wi_0(n)) * wi_1(n)) for gated FFNs)
  last_hidden_state = RMSNorm(h)
RMSNorm (T5LayerNorm) is x * rsqrt(mean(x^2) + eps) * weight in fp32: no mean, no bias. Softmax runs in fp32.

Parameters are fp32 (`T5Config.dtype` is the compute dtype). Weights in and out (HF state dicts, the key table, the
converted folder) are cosmos_jax/weights/t5.py.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cosmos_jax.models.layers import Dense, RMSNorm, normal, param

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2


@dataclasses.dataclass(frozen=True)
class T5Config:
    vocab_size: int
    d_model: int
    d_kv: int
    d_ff: int
    num_layers: int
    num_heads: int
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    feed_forward_proj: str = "relu"  # "relu", "gelu", "gated-gelu" (gelu_new), "gated-silu", ...
    layer_norm_epsilon: float = 1e-6
    dtype: str = "float32"  # compute dtype; parameters stay fp32

    @classmethod
    def t5_11b(cls, **overrides) -> T5Config:
        """google-t5/t5-11b's encoder (docs/tokenizer-t5.md §5.1)."""
        return cls(**{**dict(vocab_size=32128, d_model=1024, d_kv=128, d_ff=65536, num_layers=24, num_heads=128),
                      **overrides})

    @classmethod
    def from_dict(cls, d: Mapping) -> T5Config:
        """From our own dict or an HF `config.json` (extra fields ignored; HF defaults for omitted ones)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in fields}
        return cls(**kw)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def is_gated(self) -> bool:
        return self.feed_forward_proj.split("-")[0] == "gated"

    @property
    def act_name(self) -> str:
        """HF's `dense_act_fn`: the last "-" field, except that "gated-gelu" means gelu_new (tanh approximation)."""
        parts = self.feed_forward_proj.split("-")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
            raise ValueError(f"feed_forward_proj {self.feed_forward_proj!r}: expected 'ACT' or 'gated-ACT'")
        return "gelu_new" if self.feed_forward_proj == "gated-gelu" else parts[-1]


_ACTS = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


def relative_position_bucket(relative_position: np.ndarray, num_buckets: int = 32,
                             max_distance: int = 128) -> np.ndarray:
    """HF `T5Attention._relative_position_bucket`, bidirectional; rel = key_pos - query_pos. float32 as torch does."""
    rel = np.asarray(relative_position, dtype=np.int64)
    num_buckets //= 2
    buckets = (rel > 0).astype(np.int64) * num_buckets
    n = np.abs(rel)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    safe = np.where(is_small, max_exact, n).astype(np.float32)  # log only where it is used (n >= max_exact)
    ratio = np.log(safe / np.float32(max_exact)) / np.float32(math.log(max_distance / max_exact))
    large = max_exact + (ratio * np.float32(num_buckets - max_exact)).astype(np.int64)  # torch .to(long): truncation
    large = np.minimum(large, num_buckets - 1)
    return buckets + np.where(is_small, n, large)


class Embed(nnx.Module):
    """An embedding table [num, dim] (HF `nn.Embedding.weight`, same layout)."""

    def __init__(self, num: int, dim: int, axes, *, rngs: nnx.Rngs, std: float = 1.0):
        self.embedding = param(rngs, normal(std), (num, dim), axes)

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.embedding[...], ids, axis=0)


class T5SelfAttention(nnx.Module):
    def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs, dtype):
        inner = cfg.num_heads * cfg.d_kv
        # HF `T5PreTrainedModel._init_weights` standard deviations.
        self.q = Dense(cfg.d_model, inner, ("embed", "heads"), rngs=rngs, dtype=dtype,
                       init=normal((cfg.d_model * cfg.d_kv) ** -0.5))
        self.k = Dense(cfg.d_model, inner, ("embed", "heads"), rngs=rngs, dtype=dtype, init=normal(cfg.d_model ** -0.5))
        self.v = Dense(cfg.d_model, inner, ("embed", "heads"), rngs=rngs, dtype=dtype, init=normal(cfg.d_model ** -0.5))
        self.o = Dense(inner, cfg.d_model, ("heads", "embed"), rngs=rngs, dtype=dtype, init=normal(inner ** -0.5))
        self.num_heads, self.d_kv = cfg.num_heads, cfg.d_kv

    def __call__(self, x_BLD: jax.Array, bias_BHLL: jax.Array) -> jax.Array:
        B, L, _ = x_BLD.shape
        split = lambda t: t.reshape(B, L, self.num_heads, self.d_kv)
        q, k, v = split(self.q(x_BLD)), split(self.k(x_BLD)), split(self.v(x_BLD))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)  # no 1/sqrt(d)
        w = jax.nn.softmax(scores + bias_BHLL, axis=-1).astype(v.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", w, v).reshape(B, L, self.num_heads * self.d_kv)
        return self.o(out)


class T5FeedForward(nnx.Module):
    def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs, dtype):
        std_in = normal(cfg.d_model ** -0.5)
        if cfg.is_gated:
            self.wi_0 = Dense(cfg.d_model, cfg.d_ff, ("embed", "mlp"), rngs=rngs, dtype=dtype, init=std_in)
            self.wi_1 = Dense(cfg.d_model, cfg.d_ff, ("embed", "mlp"), rngs=rngs, dtype=dtype, init=std_in)
        else:
            self.wi = Dense(cfg.d_model, cfg.d_ff, ("embed", "mlp"), rngs=rngs, dtype=dtype, init=std_in)
        self.wo = Dense(cfg.d_ff, cfg.d_model, ("mlp", "embed"), rngs=rngs, dtype=dtype, init=normal(cfg.d_ff ** -0.5))
        self.act = _ACTS[cfg.act_name]
        self.gated = cfg.is_gated

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.act(self.wi_0(x)) * self.wi_1(x) if self.gated else self.act(self.wi(x))
        return self.wo(h)


class T5Block(nnx.Module):
    def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs, dtype):
        self.attn_norm = RMSNorm(cfg.d_model, None, rngs=rngs, eps=cfg.layer_norm_epsilon)
        self.attn = T5SelfAttention(cfg, rngs=rngs, dtype=dtype)
        self.ffn_norm = RMSNorm(cfg.d_model, None, rngs=rngs, eps=cfg.layer_norm_epsilon)
        self.ffn = T5FeedForward(cfg, rngs=rngs, dtype=dtype)

    def __call__(self, h: jax.Array, bias: jax.Array) -> jax.Array:
        h = h + self.attn(self.attn_norm(h), bias).astype(h.dtype)
        return h + self.ffn(self.ffn_norm(h)).astype(h.dtype)


class T5Encoder(nnx.Module):
    """`T5EncoderModel` (eval): `(input_ids [B, L] int, attention_mask [B, L]) -> last_hidden_state [B, L, D]`."""

    def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
        self.config = cfg
        dtype = jnp.dtype(cfg.dtype)
        self.shared = Embed(cfg.vocab_size, cfg.d_model, (None, "embed"), rngs=rngs, std=1.0)
        self.relative_attention_bias = Embed(cfg.relative_attention_num_buckets, cfg.num_heads, ("table", None),
                                             rngs=rngs, std=cfg.d_model ** -0.5)
        self.blocks = nnx.List([T5Block(cfg, rngs=rngs, dtype=dtype) for _ in range(cfg.num_layers)])
        self.final_norm = RMSNorm(cfg.d_model, None, rngs=rngs, eps=cfg.layer_norm_epsilon)

    def position_bias(self, length: int) -> jax.Array:
        """[1, H, L, L] fp32, HF `compute_bias` (block 0's table, reused by all blocks)."""
        pos = np.arange(length)
        buckets = relative_position_bucket(pos[None, :] - pos[:, None], self.config.relative_attention_num_buckets,
                                           self.config.relative_attention_max_distance)
        values = self.relative_attention_bias(jnp.asarray(buckets, jnp.int32)).astype(jnp.float32)  # [L, L, H]
        return jnp.transpose(values, (2, 0, 1))[None]

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        B, L = input_ids.shape
        h = self.shared(input_ids).astype(jnp.dtype(self.config.dtype))
        bias = self.position_bias(L)
        if attention_mask is not None:  # HF: (1 - mask) * finfo.min added to padded keys; padded queries still run
            neg = (1.0 - attention_mask.astype(jnp.float32)) * jnp.finfo(jnp.float32).min
            bias = bias + neg[:, None, None, :]
        for block in self.blocks:
            h = block(h, bias)
        return self.final_norm(h)


def create(cfg: T5Config, seed: int = 0) -> T5Encoder:
    """An initialised encoder (HF's init distributions; layer norms 1) on the default device."""
    with nnx.use_eager_sharding(False):
        return T5Encoder(cfg, rngs=nnx.Rngs(seed))


def abstract(cfg: T5Config) -> T5Encoder:
    """The encoder with ShapeDtypeStructs instead of arrays (fill it with weights.t5's `from_hf_state_dict` or
    `load_state_dict`)."""
    with nnx.use_eager_sharding(False):
        return nnx.eval_shape(lambda: T5Encoder(cfg, rngs=nnx.Rngs(0)))


# --------------------------------------------------------------------------------------------------------------------
# Upstream's embedding procedure.

def tokenize(tokenizer, texts: Sequence[str], max_length: int = 512) -> list[list[int]]:
    """Token ids with `</s>` appended and truncation to `max_length` (at most max_length - 1 text tokens).

    `tokenizer` is a `sentencepiece.SentencePieceProcessor` (T5's `spiece.model`: no BOS, we append EOS id 1) or an
    HF T5 tokenizer (its post-processor appends `</s>` itself, as upstream's `batch_encode_plus` call relies on).
    """
    texts = list(texts)
    if hasattr(tokenizer, "encode_as_ids"):
        ids = tokenizer.encode(texts, out_type=int)
        return [list(x[: max_length - 1]) + [EOS_ID] for x in ids]
    enc = tokenizer(texts, truncation=True, max_length=max_length)
    return [list(x) for x in enc["input_ids"]]


def _bucket(n: int, max_length: int) -> int:
    """Padded length for a sequence of n tokens: the next power of two ≥ 16, at most max_length.

    The encoder is bidirectional with padded keys masked, so the padded length does not change the real positions'
    values; fixed buckets keep the number of compiled shapes small and make a text's embedding independent of the
    other texts in the call.
    """
    return min(max(16, 1 << (n - 1).bit_length()), max(max_length, n))


@jax.jit
def _forward(graphdef, state, ids, mask):
    out = nnx.merge(graphdef, state)(ids, mask).astype(jnp.float32)
    return out * mask[..., None].astype(out.dtype)  # upstream: last_hidden_state[b, len_b:] = 0


def encode_ids(model: T5Encoder, ids: Sequence[Sequence[int]], pad_to: int, batch_size: int = 8) -> np.ndarray:
    """Run the encoder on token-id lists padded (id 0) to `pad_to`: float32 [N, pad_to, D], zero past each length."""
    graphdef, state = nnx.split(model)
    n = len(ids)
    out = np.zeros((n, pad_to, model.config.d_model), np.float32)
    for s in range(0, n, batch_size):
        chunk = ids[s: s + batch_size]
        tok = np.full((batch_size, pad_to), PAD_ID, np.int32)  # fixed batch: one compiled shape per length
        mask = np.zeros((batch_size, pad_to), np.int32)
        for r, x in enumerate(chunk):
            tok[r, : len(x)] = x
            mask[r, : len(x)] = 1
        y = np.asarray(_forward(graphdef, state, jnp.asarray(tok), jnp.asarray(mask)))
        out[s: s + len(chunk)] = y[: len(chunk)]
    return out


def embed_texts(model: T5Encoder, tokenizer, texts: Sequence[str], max_length: int = 512, batch_size: int = 8,
                pad_to: int | None = None) -> list[np.ndarray]:
    """Upstream's caption embeddings: a float32 [L_i, D] array per text, L_i = real length including `</s>`.

    `pad_to=None` pads each text to a power-of-two bucket (less compute for a large encoder); an int pads every
    text to that length (upstream pads to max_length = 512; one compiled shape, cheapest for a tiny encoder).
    """
    ids = tokenize(tokenizer, texts, max_length)
    result: list[np.ndarray | None] = [None] * len(ids)
    by_len: dict[int, list[int]] = {}
    for i, x in enumerate(ids):
        by_len.setdefault(_bucket(len(x), max_length) if pad_to is None else max(pad_to, len(x)), []).append(i)
    for length, idx in sorted(by_len.items()):
        y = encode_ids(model, [ids[i] for i in idx], length, batch_size)
        for r, i in enumerate(idx):
            result[i] = np.ascontiguousarray(y[r, : len(ids[i])])
    return result  # type: ignore[return-value]
