"""The tokenizer's weights: the release's key table, and the converter's keys kept, dropped and refused."""

import math

import numpy as np
import pytest

from cosmos_jax.models import cosmos_tokenizer as ct
from cosmos_jax.weights import tokenizer as tokenizer_weights
from cosmos_jax.weights.keymap import StrictLoadError
from tests.models.cosmos_tokenizer_torch import torch_networks
from tests.models.test_cosmos_tokenizer import TINY


def test_key_table_is_the_release_table():
    table = tokenizer_weights.torch_key_table(ct.Cosmos8x8x8Config.release())
    counts = {s: (len(t), sum(math.prod(shape) for _, shape in t.values())) for s, t in table.items()}
    assert counts == {"encoder": (138, 42_914_864), "decoder": (172, 62_738_832)}  # spec §1.1, §2.1
    assert table["encoder"]["encoder.down.0.downsample.conv2.conv3d.weight"][1] == (256, 256, 3, 1, 1)
    assert table["decoder"]["decoder.up.1.upsample.conv1.conv3d.weight"][1] == (512, 512, 3, 1, 1)
    assert not any(k.startswith(("encoder.down.1.downsample", "decoder.up.2.upsample")) for t in table.values()
                   for k in t)
    assert len(tokenizer_weights.unused_hybrid_keys(ct.Cosmos8x8x8Config.release())["decoder"]) == 6
    enc, dec = torch_networks(TINY)  # the reference's own keys (minus the 5 buffers) are the tiny table
    tiny = tokenizer_weights.torch_key_table(TINY)
    for side, m in (("encoder", enc), ("decoder", dec)):
        sd = {k: tuple(v.shape) for k, v in m.state_dict().items() if k not in tokenizer_weights.BUFFER_KEYS}
        assert sd == {k: shape for k, (_, shape) in tiny[side].items()}


def test_converter_drops_old_hybrid_keys_only():
    enc, dec = torch_networks(TINY, old=True)  # older Cosmos-Tokenizer code: 12 never-used resample convs
    states = {"encoder": {k: v.numpy() for k, v in enc.state_dict().items()},
              "decoder": {k: v.numpy() for k, v in dec.state_dict().items()}}
    mean_std = (np.zeros((16, 8), np.float32), np.ones((16, 8), np.float32))
    tree, dropped = tokenizer_weights.convert_states(states, mean_std, TINY)
    assert len(dropped) == 5 + 12 and tree["mean"].shape == (16, 8)
    states["decoder"]["decoder.up.0.upsample.conv1.conv3d.bias"] = np.zeros(16, np.float32)  # up.0 has no upsample
    with pytest.raises(StrictLoadError, match=r"unexpected key decoder\.up\.0\.upsample\.conv1\.conv3d\.bias"):
        tokenizer_weights.convert_states(states, mean_std, TINY)
