"""`python -m converters.tokenizer_to_orbax`: every key problem of the release files on stderr, exit status 1,
nothing written."""

import json
import os
import subprocess
import sys

import torch
from torch import nn

from tests.models.cosmos_tokenizer_torch import torch_networks
from tests.models.test_cosmos_tokenizer import ARCH, TINY

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_converter_is_strict(tmp_path):
    enc, dec = torch_networks(TINY)
    enc.encoder.register_buffer("stray", torch.zeros(3))  # unexpected
    enc.encoder.conv_in[0].conv3d.bias = None  # missing
    enc.quant_conv.conv3d = nn.Conv3d(16, 16, (1, 3, 3), padding=(0, 1, 1))  # mis-shaped, same output shape
    x = torch.rand(1, 3, 9, 16, 16)
    with torch.no_grad():
        torch.jit.save(torch.jit.trace(enc, x), str(tmp_path / "encoder.jit"))
        torch.jit.save(torch.jit.trace(dec, enc(x)[0]), str(tmp_path / "decoder.jit"))
    torch.save((torch.zeros(16, 16), torch.ones(16, 16)), tmp_path / "mean_std.pt")
    r = subprocess.run([sys.executable, "-m", "converters.tokenizer_to_orbax", "--src", str(tmp_path),
                        "--dst", str(tmp_path / "out"), "--arch", json.dumps(ARCH)],
                       cwd=ROOT, capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert r.returncode == 1, r.stderr
    assert "unexpected key encoder.stray (3,)" in r.stderr
    assert "missing key encoder.conv_in.0.conv3d.bias (expected shape (8,))" in r.stderr
    assert "shape mismatch quant_conv.conv3d.weight: got (16, 16, 1, 3, 3), expected (16, 16, 1, 1, 1)" in r.stderr
    assert r.stderr.count("encoder.jit:") == 3 and "decoder.jit" not in r.stderr
    assert not (tmp_path / "out").exists()
