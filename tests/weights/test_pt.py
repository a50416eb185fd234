"""Upstream `.pt` files without torch: the streaming reader (views, dtypes, refused pickles) and writer (torch's
records and pickle, strict use), and the torch-side dtype-exact conversions."""

import os
import pickle
import zipfile

import ml_dtypes
import numpy as np
import pytest
import torch

from cosmos_jax.weights import pt
from cosmos_jax.weights.pt import PtFormatError, PtIndex


def test_malicious_file_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"net.x": torch.zeros(1)}, tmp_path / "evil.pt")
    with zipfile.ZipFile(tmp_path / "evil.pt") as z:
        members = {n: z.read(n) for n in z.namelist()}
    pkl = next(n for n in members if n.endswith("data.pkl"))
    members[pkl] = pickle.dumps({"net.x": Evil()})
    with zipfile.ZipFile(tmp_path / "evil2.pt", "w") as z:
        for n, b in members.items():
            z.writestr(n, b)
    with pytest.raises(PtFormatError, match="refused to unpickle"):
        PtIndex(str(tmp_path / "evil2.pt"))
    assert not marker.exists()


def test_reader_matches_torch_for_views_and_dtypes(tmp_path):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    sd = {"t": base.t(), "view": base[1:3, 2:5], "half": base.half(), "bf": base.bfloat16(), "i": torch.arange(5)}
    torch.save(sd, tmp_path / "v.pt")
    with PtIndex(str(tmp_path / "v.pt")) as idx:
        for k, v in sd.items():
            a = idx.read(k)
            want = v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
            assert a.shape == tuple(v.shape) and np.array_equal(np.asarray(a, want.dtype), want), k


def test_writer_refuses_misuse_and_leaves_nothing(tmp_path):
    path = str(tmp_path / "x.pt")
    entries = [("a", (2, 3), np.float32), ("b", (4,), ml_dtypes.bfloat16)]
    with pytest.raises(ValueError, match="should be a"):
        with pt.PtWriter(path, entries) as w:
            w.add("b", np.zeros(4, ml_dtypes.bfloat16))
    with pytest.raises(ValueError, match="not written"):
        with pt.PtWriter(path, entries) as w:
            w.add("a", np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(2, 3\) float32"):
        with pt.PtWriter(path, entries) as w:
            w.add("a", np.zeros((2, 3), np.float64))
    assert os.listdir(tmp_path) == []
    with pt.PtWriter(path, entries) as w:  # any layout and byte order in, contiguous little-endian out
        w.add("a", np.arange(6, dtype=">f4").reshape(3, 2).T)
        w.add("b", np.ones(4, ml_dtypes.bfloat16))
    sd = torch.load(path, weights_only=True)
    assert torch.equal(sd["a"], torch.arange(6, dtype=torch.float32).reshape(3, 2).T)
    assert torch.equal(sd["b"], torch.ones(4, dtype=torch.bfloat16)) and os.listdir(tmp_path) == ["x.pt"]


def test_pickle_is_torchs(tmp_path):
    sd = {"w": torch.randn(3, 4).to(torch.bfloat16), "b": torch.zeros(5), "s": torch.tensor(2.0),
          "i": torch.arange(6).reshape(2, 3), "h": torch.ones(2, 2, dtype=torch.float16)}
    torch.save(sd, tmp_path / "t.pt")
    with zipfile.ZipFile(tmp_path / "t.pt") as z:
        want = z.read("t/data.pkl")
    entries = [(k, tuple(v.shape), pt.tensor_to_numpy(v).dtype) for k, v in sd.items()]
    assert pt.state_dict_pickle(entries) == want


def test_bf16_numpy_bits_preserved():
    t = torch.randn(5).to(torch.bfloat16)
    a = pt.tensor_to_numpy(t)
    assert a.dtype == ml_dtypes.bfloat16
    assert torch.equal(pt.numpy_to_tensor(a), t)
