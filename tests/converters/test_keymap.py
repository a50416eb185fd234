"""The key map: every upstream key <-> exactly one of our leaves, both directions, strictly."""

import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
import torch

from configs import waymo
from converters import keys, load
from cosmos_jax.models import build
from cosmos_jax.weights import keymap, pt
from tests.conftest import PARITY, tiny_dit_config


def parity_state():
    return torch.load(PARITY / "dit_tiny.pt", weights_only=True)


@pytest.mark.parametrize("variant", ["t2w", "v2w"])
def test_7b_table_is_upstreams(variant):
    table = keys.table(waymo.get_config(variant))
    assert len(table) == 574
    assert len({k for k, _ in table}) == 574
    buffers = {"net.pos_embedder.seq", "logvar.0.freqs", "logvar.0.phases"}
    sizes = {k: int(np.prod(s)) for k, s in table}
    assert sum(v for k, v in sizes.items() if k.startswith("net.") and k not in buffers) == 7_234_799_670
    assert sum(v for k, v in sizes.items() if k.startswith("logvar.") and k not in buffers) == 128
    assert len([k for k in sizes if k not in buffers]) == 571
    d = dict(table)
    assert d["net.x_embedder.proj.1.weight"] == (4096, 96)
    assert d["net.view_embeddings.weight"] == (7, 6)
    assert d["net.blocks.block27.blocks.1.block.attn.to_k.0.weight"] == (4096, 1024)
    assert d["net.blocks.block0.blocks.2.block.layer1.weight"] == (16384, 4096)
    assert d["net.final_layer.adaLN_modulation.2.weight"] == (8192, 256)
    assert d["logvar.1.weight"] == (1, 128)


def test_keys_cli_prints_only_the_table():
    out = subprocess.run([sys.executable, "-m", "converters.keys", "--config=configs/waymo.py:v2w"],
                         capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert len(lines) == 574
    assert all(len(line.split("\t")) == 2 and all(p.isdigit() for p in line.split("\t")[1].split(","))
               for line in lines)
    assert lines[0] == "net.x_embedder.proj.1.weight\t4096,96"


def test_tiny_table_matches_the_parity_checkpoint():
    sd = parity_state()
    cfg = tiny_dit_config()
    table = keymap.torch_table(build.flat_shapes(build.abstract(cfg)), cfg.num_blocks)
    assert [k for k, _ in table] == list(sd.keys())  # same keys, same order
    assert all(tuple(sd[k].shape) == s for k, s in table)


def test_every_key_maps_to_one_leaf_and_back():
    cfg = tiny_dit_config()
    shapes = build.flat_shapes(build.abstract(cfg))
    seen = {}
    for _key, entry, i in keymap.expand(cfg.num_blocks):
        seen.setdefault(entry.path, set()).add(i)
    assert set(seen) == set(shapes)  # every leaf is filled by some key
    for path, idx in seen.items():  # stacked leaves get every block exactly once
        assert idx == ({None} if None in idx else set(range(cfg.num_blocks))), path
    # A numbered state dict: each tensor unique, so a misrouted key would show.
    sd = {k: np.arange(np.prod(s), dtype=np.float32).reshape(s) + 1000 * n
          for n, (k, s) in enumerate(keymap.torch_table(shapes, cfg.num_blocks))}
    tree = keymap.from_torch(sd, shapes, cfg.num_blocks)
    assert np.array_equal(tree[("net", "blocks", "ca", "attn", "to_k", "kernel")][1],
                          sd["net.blocks.block1.blocks.1.block.attn.to_k.0.weight"].T)
    back = keymap.to_torch(tree, cfg.num_blocks)
    assert list(back) == list(sd)
    for k in sd:
        assert np.array_equal(back[k], sd[k]), k


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pt_round_trip_bit_exact(tmp_path, dtype):
    src = {k: v.to(dtype) for k, v in parity_state().items()}
    torch.save(src, tmp_path / "in.pt")
    model = build.abstract(tiny_dit_config())
    tree = load.pt_to_tree(str(tmp_path / "in.pt"), model)
    load.tree_to_pt(tree, 2, str(tmp_path / "out.pt"))
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    assert list(out) == list(src)
    for k in src:
        assert out[k].dtype == dtype and torch.equal(out[k], src[k]), k


def test_wrapper_extra_state_and_bf16_source(tmp_path):
    sd = parity_state()
    wrapped = {"model": {**{k: v.to(torch.bfloat16) for k, v in sd.items()},
                         "net.blocks.block0.blocks.0.block.attn.attn_op._extra_state": torch.zeros(3)}}
    torch.save(wrapped, tmp_path / "w.pt")
    model = build.create(tiny_dit_config())
    load.load_pt_into(model, str(tmp_path / "w.pt"))
    got = build.flat_arrays(model)[("net", "blocks", "fa", "attn", "to_q", "kernel")][0]
    want = sd["net.blocks.block0.blocks.0.block.attn.to_q.0.weight"].to(torch.bfloat16).float().numpy().T
    assert got.dtype == np.float32 and np.array_equal(got, want)


@pytest.mark.parametrize("break_it,expect", [
    (lambda sd: sd.pop("net.blocks.block1.blocks.2.block.layer2.weight"),
     "missing key net.blocks.block1.blocks.2.block.layer2.weight"),
    (lambda sd: sd.__setitem__("net.extra_thing.weight", torch.zeros(2)), "unexpected key net.extra_thing.weight"),
    (lambda sd: sd.__setitem__("net.view_embeddings.weight", torch.zeros(6, 6)),
     r"shape mismatch net.view_embeddings.weight: got \(6, 6\), expected \(7, 6\)"),
])
def test_strict_load_names_the_key(tmp_path, break_it, expect):
    sd = dict(parity_state())
    break_it(sd)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(keymap.StrictLoadError, match=expect) as err:
        load.pt_to_tree(str(tmp_path / "bad.pt"), build.abstract(tiny_dit_config()))
    assert str(tmp_path / "bad.pt") in str(err.value)


def test_corrupt_file_is_named(tmp_path):
    p = tmp_path / "trunc.pt"
    p.write_bytes((PARITY / "dit_tiny.pt").read_bytes()[:1000])
    with pytest.raises(ValueError, match="trunc.pt"):
        load.pt_to_tree(str(p), build.abstract(tiny_dit_config()))
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load.pt_to_tree(str(tmp_path / "nope.pt"), build.abstract(tiny_dit_config()))


def test_bf16_numpy_bits_preserved():
    t = torch.randn(5).to(torch.bfloat16)
    a = pt.tensor_to_numpy(t)
    assert a.dtype == ml_dtypes.bfloat16
    assert torch.equal(pt.numpy_to_tensor(a), t)
