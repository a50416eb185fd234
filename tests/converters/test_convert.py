"""DiT converters both ways: bit-exact round trip, strictness, wrappers, bad files, bounded memory."""

import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from converters import dit_to_orbax, orbax_to_pt
from cosmos_jax import base_weights
from cosmos_jax.weights import keymap
from cosmos_jax.weights.pt import PtFormatError, PtIndex
from tests.conftest import PARITY, tiny_experiment_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parity():
    return torch.load(PARITY / "dit_tiny.pt", weights_only=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_round_trip_bit_exact(tmp_path, dtype):
    src = {k: v.to(dtype) for k, v in parity().items()}
    torch.save(src, tmp_path / "in.pt")
    summary = dit_to_orbax.convert(str(tmp_path / "in.pt"), str(tmp_path / "orbax"), tiny_experiment_config())
    assert summary["tensors"] == 54 and summary["values"] == sum(v.numel() for v in src.values())
    assert base_weights.read_meta(str(tmp_path / "orbax"))["num_blocks"] == 2
    out = torch.load(orbax_to_pt.export_base(str(tmp_path / "orbax"), str(tmp_path / "pt")), weights_only=True)
    assert list(out) == list(src)
    assert all(out[k].dtype == dtype and torch.equal(out[k], src[k]) for k in src)


def test_wrapper_and_extra_state_are_accepted(tmp_path):
    sd = dict(parity())
    sd["net.blocks.block0.blocks.0.block.attn.attn_op._extra_state"] = torch.zeros(4, dtype=torch.uint8)
    torch.save({"model": sd}, tmp_path / "w.pt")
    s = dit_to_orbax.convert(str(tmp_path / "w.pt"), str(tmp_path / "o"), tiny_experiment_config())
    assert s["tensors"] == 54 and s["skipped_extra_state"] == 1


@pytest.mark.parametrize("edit,expect", [
    (lambda sd: sd.pop("net.affline_norm.weight"), "missing key net.affline_norm.weight"),
    (lambda sd: sd.__setitem__("net.lora.A", torch.zeros(2)), "unexpected key net.lora.A"),
    (lambda sd: sd.__setitem__("logvar.1.weight", torch.zeros(1, 64)),
     r"shape mismatch logvar.1.weight: got \(1, 64\), expected \(1, 128\)"),
])
def test_strict_every_problem_listed_and_nothing_written(tmp_path, edit, expect):
    sd = dict(parity())
    edit(sd)
    sd.pop("net.view_embeddings.weight")  # a second problem: both must be listed
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(keymap.StrictLoadError, match=expect) as err:
        dit_to_orbax.convert(str(tmp_path / "bad.pt"), str(tmp_path / "o"), tiny_experiment_config())
    assert "missing key net.view_embeddings.weight" in str(err.value) and "bad.pt" in str(err.value)
    assert not os.path.exists(tmp_path / "o")


def test_cli_exit_status_and_message(tmp_path):
    sd = dict(parity())
    sd.pop("net.x_embedder.proj.1.weight")
    torch.save(sd, tmp_path / "bad.pt")
    cmd = [sys.executable, "-m", "converters.dit_to_orbax", f"--src={tmp_path / 'bad.pt'}", f"--dst={tmp_path / 'o'}",
           "--config=configs/demo.py"] + [f"--config.model.{k}={v}" for k, v in (
               ("model_channels", 128), ("num_blocks", 2), ("num_heads", 2), ("adaln_lora_dim", 32),
               ("crossattn_emb_channels", 32))]
    bad = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 1 and "missing key net.x_embedder.proj.1.weight" in bad.stderr
    cmd[3] = f"--src={PARITY / 'dit_tiny.pt'}"
    ok = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr[-2000:]
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 1 and "--overwrite" in again.stderr  # an existing conversion is not clobbered


def test_truncated_corrupt_and_malicious_files_are_named(tmp_path):
    data = (PARITY / "dit_tiny.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(PtFormatError, match="trunc.pt"):
        dit_to_orbax.convert(str(tmp_path / "trunc.pt"), str(tmp_path / "o"), tiny_experiment_config())
    # flip bytes inside one tensor's storage: the zip CRC check catches it when that tensor is read
    with zipfile.ZipFile(PARITY / "dit_tiny.pt") as z:
        info = next(i for i in z.infolist() if i.filename.endswith("/data/3"))
    corrupt = bytearray(data)
    name_len, extra_len = (int.from_bytes(data[info.header_offset + o: info.header_offset + o + 2], "little")
                           for o in (26, 28))
    start = info.header_offset + 30 + name_len + extra_len  # the local header's own extra (alignment padding)
    corrupt[start + 10: start + 20] = b"\xff" * 10
    (tmp_path / "corrupt.pt").write_bytes(bytes(corrupt))
    with pytest.raises(PtFormatError, match="corrupt.pt: cannot read tensor"):
        dit_to_orbax.convert(str(tmp_path / "corrupt.pt"), str(tmp_path / "o2"), tiny_experiment_config())
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


def _peak_rss_mb(src, dst, num_blocks, width):
    code = ("from configs import demo; from converters import dit_to_orbax; c = demo.get_config();"
            f"c.model.num_blocks={num_blocks}; c.model.model_channels={width}; c.model.num_heads=4;"
            "c.model.crossattn_emb_channels=32; c.model.adaln_lora_dim=16;"
            f"dit_to_orbax.convert('{src}', '{dst}', c);"
            "print(dit_to_orbax.peak_rss_mb())")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def test_peak_memory_does_not_grow_with_the_file(tmp_path):
    """Peak RSS converting 2 vs 8 blocks of a 1024-wide network: the file grows by 6 blocks (342 MB fp32); the
    peak stays about one block + the largest tensor above the runtime (measured +63 MB), far from the file."""
    from cosmos_jax.models import build

    width = 1024
    peaks, sizes = {}, {}
    for n in (2, 8):
        c = tiny_experiment_config()
        c.model.update(dict(num_blocks=n, model_channels=width, num_heads=4, crossattn_emb_channels=32,
                            adaln_lora_dim=16))
        cfg = build.dit_config(c)
        table = keymap.torch_table(build.flat_shapes(build.abstract(cfg)), n)
        torch.save({k: torch.randn(s) for k, s in table}, tmp_path / f"m{n}.pt")
        sizes[n] = os.path.getsize(tmp_path / f"m{n}.pt") / 2**20
        # the smaller of two runs: allocator noise on a shared machine only ever adds
        peaks[n] = min(_peak_rss_mb(tmp_path / f"m{n}.pt", tmp_path / f"o{n}_{r}", n, width) for r in range(2))
    assert peaks[8] - peaks[2] < 0.5 * (sizes[8] - sizes[2]), (peaks, sizes)
