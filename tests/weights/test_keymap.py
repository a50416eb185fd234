"""The key map: every upstream key <-> exactly one of our leaves, both directions, strictly."""

import numpy as np
import pytest
import torch

from configs import waymo
from cosmos_jax.models import build
from cosmos_jax.weights import dit, keymap
from tests.conftest import PARITY, tiny_dit_config


def parity_state():
    return torch.load(PARITY / "dit_tiny.pt", weights_only=True)


@pytest.mark.parametrize("variant", ["t2w", "v2w"])
def test_7b_table_is_upstreams(variant):
    table = keymap.torch_table(*dit.config_shapes(waymo.get_config(variant)))
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


def test_tiny_table_matches_the_parity_checkpoint():
    sd = parity_state()
    cfg = tiny_dit_config()
    table = keymap.torch_table(dit.shapes(build.abstract(cfg)), cfg.num_blocks)
    assert [k for k, _ in table] == list(sd.keys())  # same keys, same order
    assert all(tuple(sd[k].shape) == s for k, s in table)


def test_every_key_maps_to_one_leaf_and_back():
    cfg = tiny_dit_config()
    shapes = dit.shapes(build.abstract(cfg))
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
