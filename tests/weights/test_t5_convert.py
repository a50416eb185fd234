"""weights/t5_convert.py and its command `converters.t5_to_orbax`: Hugging Face T5 folders (zip / legacy / sharded
.bin, safetensors) -> converted folder -> `load_converted(...).embed` equal to transformers' T5EncoderModel under
upstream's convention; strictness; the `embed_captions --t5` path."""

import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import types
import zipfile

import ml_collections
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
spm = pytest.importorskip("sentencepiece")

from converters import t5_to_orbax as t5_cli  # noqa: E402
from cosmos_jax import generate, rig  # noqa: E402
from cosmos_jax.data import embed_captions, layout  # noqa: E402
from cosmos_jax.models import t5  # noqa: E402
from cosmos_jax.weights import t5 as t5_weights  # noqa: E402
from cosmos_jax.weights import t5_convert as t5c  # noqa: E402
from cosmos_jax.weights.keymap import StrictLoadError  # noqa: E402
from cosmos_jax.weights.pt import PtFormatError  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORPUS = [
    "The video is captured from a camera mounted on a car. The camera is facing forward.",
    "A red truck overtakes on the left while a blue sedan waits at the crossing.",
    "Tall grey buildings line the street and street lights stand along both sidewalks.",
    "The ego car drives forward along a straight two-lane city street at dusk.",
    "An orange bus approaches in the oncoming lane; no other vehicles are visible.",
]
TEXTS = [CORPUS[0], "a blue bus", "", "Street lights at night. " * 40]  # the last is truncated to 512 tokens
TINY = dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4, feed_forward_proj="relu")


def _spiece() -> bytes:
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS), model_writer=buf, vocab_size=60,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   hard_vocab_limit=False, num_threads=1, minloglevel=2)
    return buf.getvalue()


def _reference(hf_dir: str, sp, texts) -> list[np.ndarray]:
    """transformers' T5EncoderModel, upstream's convention: ids + </s>, pad 512 with the mask, zero, trim."""
    enc = transformers.T5EncoderModel.from_pretrained(hf_dir).eval()
    ids = [x[:511] + [1] for x in sp.encode(list(texts), out_type=int)]
    tok = np.zeros((len(ids), 512), np.int64)
    mask = np.zeros_like(tok)
    for r, x in enumerate(ids):
        tok[r, : len(x)], mask[r, : len(x)] = x, 1
    with torch.no_grad():
        out = enc(input_ids=torch.tensor(tok), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    out = out * mask[..., None]
    assert max(len(x) for x in ids) == 512 and min(len(x) for x in ids) == 1
    return [out[r, : len(x)] for r, x in enumerate(ids)]


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """{variant: SRC folder} of one tiny random T5ForConditionalGeneration, plus its reference embeddings."""
    root = tmp_path_factory.mktemp("t5src")
    model_bytes = _spiece()
    sp = spm.SentencePieceProcessor(model_proto=model_bytes)
    vocab = -(-sp.get_piece_size() // 8) * 8 + 8  # padded past the pieces, like t5-11b's 32128 > 32100
    torch.manual_seed(0)
    model = transformers.T5ForConditionalGeneration(transformers.T5Config(vocab_size=vocab, **TINY)).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
    st = root / "safetensors"
    model.save_pretrained(st)
    (st / "spiece.model").write_bytes(model_bytes)
    sd = model.state_dict()  # the full file: encoder, decoder, shared + its tied aliases (lm_head included)
    assert "decoder.block.0.layer.1.EncDecAttention.q.weight" in sd and "encoder.embed_tokens.weight" in sd
    dirs = {"safetensors": str(st)}
    for variant in ("zip", "legacy", "sharded"):
        d = root / variant
        d.mkdir()
        shutil.copy(st / "config.json", d / "config.json")
        (d / "spiece.model").write_bytes(model_bytes)
        if variant == "zip":
            torch.save(sd, d / "pytorch_model.bin")
        elif variant == "legacy":
            torch.save(sd, d / "pytorch_model.bin", _use_new_zipfile_serialization=False)
        else:
            keys = list(sd)
            names = ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]
            halves = [keys[: len(keys) // 2], keys[len(keys) // 2:]]
            for name, part in zip(names, halves, strict=True):
                torch.save({k: sd[k].clone() for k in part}, d / name)
            index = {"metadata": {"total_size": sum(v.numel() * 4 for v in sd.values())},
                     "weight_map": {k: n for n, part in zip(names, halves, strict=True) for k in part}}
            (d / "pytorch_model.bin.index.json").write_text(json.dumps(index))
        dirs[variant] = str(d)
    assert zipfile.is_zipfile(os.path.join(dirs["zip"], "pytorch_model.bin"))
    assert not zipfile.is_zipfile(os.path.join(dirs["legacy"], "pytorch_model.bin"))
    return {"dirs": dirs, "sd": sd, "ref": _reference(str(st), sp, TEXTS), "vocab": vocab}


@pytest.mark.parametrize("variant", ["zip", "legacy", "sharded", "safetensors"])
def test_convert_and_embed_match_transformers(hf, tmp_path, variant, caplog):
    dst = str(tmp_path / "t5")
    assert t5_cli.main(["--src", hf["dirs"][variant], "--dst", dst]) == 0
    if variant == "legacy":
        assert "legacy (non-zip) torch file" in caplog.text and "~45 GB" in caplog.text
    meta = t5_weights.read_meta(dst)
    assert meta["t5_config"] == t5.T5Config(vocab_size=hf["vocab"], d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                            num_heads=4).to_dict()
    assert meta["dtypes"] == ["float32"] and meta["num_layers"] == 2
    assert sorted(os.listdir(dst)) == ["block_000", "block_001", "config.json", "rest", "spiece.model"]
    enc = t5_weights.load_converted(dst)
    out = enc.embed(TEXTS)
    assert enc.embed_dim == 32 and [o.shape for o in out] == [r.shape for r in hf["ref"]]
    assert all(o.dtype == np.float32 for o in out) and out[-1].shape[0] == 512 and out[2].shape[0] == 1
    rel = max(np.abs(o - r).max() / np.abs(r).max() for o, r in zip(out, hf["ref"], strict=True))
    print(f"{variant}: max relative error {rel:.2e}")
    assert rel <= 1e-5, rel


def test_bfloat16_output_and_overwrite(hf, tmp_path):
    dst = str(tmp_path / "t5")
    summary = t5c.convert(hf["dirs"]["zip"], dst, dtype="bfloat16")
    assert summary["tensors"] == 2 * 8 + 3 and summary["ignored"] > 0
    with pytest.raises(FileExistsError, match="--overwrite"):
        t5c.convert(hf["dirs"]["zip"], dst)
    assert t5_weights.read_meta(dst)["dtypes"] == ["bfloat16"]
    model = t5_weights.load_model(dst)
    assert model.blocks[0].ffn.wi.kernel[...].dtype == np.dtype("bfloat16")
    out = t5_weights.load_converted(dst).embed(TEXTS[:2])
    for o, r in zip(out, hf["ref"][:2], strict=True):
        assert o.dtype == np.float32 and np.abs(o - r).max() / np.abs(r).max() < 3e-2


def test_strict_missing_misshaped_unexpected_exit_1(hf, tmp_path):
    sd = dict(hf["sd"])
    del sd["encoder.block.1.layer.0.SelfAttention.k.weight"]
    sd["encoder.block.0.layer.1.DenseReluDense.wi.weight"] = torch.zeros(65, 32)
    sd["encoder.block.0.layer.0.SelfAttention.extra.weight"] = torch.zeros(3)
    src = tmp_path / "bad"
    shutil.copytree(hf["dirs"]["zip"], src)
    torch.save(sd, src / "pytorch_model.bin")
    dst = tmp_path / "out"
    cmd = [sys.executable, "-m", "converters.t5_to_orbax", "--src", str(src), "--dst", str(dst)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert r.returncode == 1, r.stderr[-2000:]
    assert "3 key problem(s)" in r.stderr
    assert "missing key encoder.block.1.layer.0.SelfAttention.k.weight (expected shape (32, 32))" in r.stderr
    assert "shape mismatch encoder.block.0.layer.1.DenseReluDense.wi.weight: got (65, 32), expected (64, 32)" \
        in r.stderr
    assert "unexpected key encoder.block.0.layer.0.SelfAttention.extra.weight" in r.stderr
    assert not os.path.exists(dst / "config.json")
    # Tied copies that differ, and a missing tokenizer, are named too (in-process entry).
    sd = dict(hf["sd"])
    sd["encoder.embed_tokens.weight"] = sd["shared.weight"] + 1
    torch.save(sd, src / "pytorch_model.bin")
    with pytest.raises(StrictLoadError, match="encoder.embed_tokens.weight differs from shared.weight"):
        t5c.convert(str(src), str(dst))
    os.remove(src / "spiece.model")
    assert t5_cli.main(["--src", str(src), "--dst", str(dst)]) == 1


def test_embed_captions_with_converted_folder(hf, tmp_path):
    dst = str(tmp_path / "t5")
    t5c.convert(hf["dirs"]["zip"], dst)
    with pytest.raises(ValueError, match="Hugging Face T5 checkpoint; convert it first with python -m "
                                         "converters.t5_to_orbax"):
        t5_weights.load_encoder(hf["dirs"]["zip"])
    enc = t5_weights.load_encoder(dst)
    assert isinstance(enc, t5_weights.TextEncoder)
    root = tmp_path / "waymo"
    (root / "videos" / "pinhole_front").mkdir(parents=True)
    (root / "videos" / "pinhole_front" / "clip0.mp4").write_bytes(b"")  # only the name is read
    caps = tmp_path / "captions.csv"
    caps.write_text(f"clip0\n\"{CORPUS[1]}\"\n")
    assert embed_captions.main(["--captions", str(caps), "--dataset", str(root), "--t5", dst, "--no_progress"]) == 0
    with open(layout.caption_path(str(root), "pinhole_front", "clip0"), "rb") as f:
        emb = pickle.load(f)
    ref = enc.embed([CORPUS[1]])[0]
    assert isinstance(emb, list) and emb[0].shape == ref.shape and ref.shape[1] == 32
    np.testing.assert_array_equal(emb[0], ref)
    for view in rig.VIEW_KEYS:
        for p in layout.prefix_paths(str(root), view):
            with open(p, "rb") as f:
                assert pickle.load(f).shape[1] == 32

    # generate's --t5 takes the same folder (prompts of the upstream rig's first 2 views).
    f = types.SimpleNamespace(prompt_pickles=None, t5=dst, **{k: None for k in generate.PROMPT_FLAGS})
    f.prompt = CORPUS[1]
    cfg = ml_collections.ConfigDict({"data": {"text_tokens": 512, "dataset_dir": str(root)},
                                     "model": {"crossattn_emb_channels": 32}})
    text, prompts = generate.text_embeddings(f, cfg, rig.Rig.upstream(2))
    assert text.shape == (2, 512, 32) and prompts[0] == CORPUS[1]
    np.testing.assert_array_equal(text[0, : len(ref)], ref)
    assert not text[0, len(ref):].any()


def test_unreadable_weights_are_named(hf, tmp_path):
    src = tmp_path / "trunc"
    shutil.copytree(hf["dirs"]["legacy"], src)
    data = (src / "pytorch_model.bin").read_bytes()
    (src / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(PtFormatError, match="trunc/pytorch_model.bin: neither a zip nor a readable legacy"):
        t5c.convert(str(src), str(tmp_path / "o"))
    os.remove(src / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="no weights \\(expected pytorch_model.bin"):
        t5c.convert(str(src), str(tmp_path / "o"))


def test_tokenizer_matches_transformers_t5tokenizer(hf):
    """Our ids (spiece.model + </s>, truncated to 512) are what upstream's HF T5Tokenizer call gives."""
    src = hf["dirs"]["zip"]
    tok = transformers.T5Tokenizer.from_pretrained(src, extra_ids=0)
    sp = spm.SentencePieceProcessor(model_file=os.path.join(src, "spiece.model"))
    texts = [*TEXTS, *CORPUS, "  double  spaces\tand tab ", "Ünïcödé café — “quotes”", "a\nnewline"]
    ref = tok(texts, truncation=True, padding="max_length", max_length=512)
    ids = t5.tokenize(sp, texts)
    assert ids == [[i for i, m in zip(r, mask, strict=True) if m]
                   for r, mask in zip(ref["input_ids"], ref["attention_mask"], strict=True)]
