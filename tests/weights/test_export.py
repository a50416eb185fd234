"""Streaming `.pt` export (cosmos_jax/weights/export.py, pt.PtWriter): bit-identical to the whole-state
algorithm, loadable by torch (also mmap) and by our reader, atomic, sharding-independent, size known up front."""

import os
import struct
import zipfile

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch

from configs import demo
from cosmos_jax import lora, optim, sharding
from cosmos_jax import train_state as ts
from cosmos_jax.models import build
from cosmos_jax.weights import checkpoint, dit, export, keymap, pt, tree
from cosmos_jax.weights.pt import PtIndex

TARGETS = ("to_q", "to_k", "to_v", "to_out", "layer1", "layer2")
SERIAL = ".data/serialization_id"  # random per file, as torch's


def config(lora_rank: int = 0):
    c = demo.get_config()
    c.model.update(dict(model_channels=32, num_blocks=2, num_heads=2, crossattn_emb_channels=8, adaln_lora_dim=8,
                        dtype="bfloat16" if lora_rank else "float32"))
    if lora_rank:
        c.lora.rank, c.lora.alpha, c.lora.targets = lora_rank, 8.0, TARGETS
    return c


def make_state(c, fsdp: int = 1, seed: int = 0):
    """A train state with random values everywhere (EMA different from params; LoRA adapters non-zero)."""
    cfg, tx = build.dit_config(c), optim.make(c)
    mesh = sharding.make_mesh((("data", 1), ("fsdp", fsdp), ("context", 1)), devices=jax.devices()[:fsdp])
    _, abstract, shardings = ts.layout(cfg, tx, mesh)
    state = ts.create(cfg, tx, mesh, shardings)
    rng = np.random.default_rng(seed)
    out = dict(state)
    for top in ("params", "buffers", "ema"):
        flat, sh = tree.flat(state[top]), tree.flat(shardings[top])
        out[top] = tree.unflat({p: jax.device_put(np.asarray(rng.standard_normal(a.shape) * 0.3, np.float32)
                                                .astype(a.dtype), sh[p]) for p, a in flat.items()})
    return cfg, abstract, out


def reference(state, num_blocks, lora_scale):
    """Today's algorithm (the whole state on host): lora.merge + keymap.to_torch + numpy casts."""
    host = sharding.to_host({"params": state["params"], "buffers": state["buffers"], "ema": state["ema"]})
    buffers = tree.flat(host["buffers"])
    reg_tree, ema_tree = {**tree.flat(host["params"]), **buffers}, {**tree.flat(host["ema"]), **buffers}
    if lora.has_lora(reg_tree):
        reg_tree, ema_tree = lora.merge(reg_tree, lora_scale), lora.merge(ema_tree, lora_scale)
    reg = {k: np.asarray(v, np.float32).astype(ml_dtypes.bfloat16)
           for k, v in keymap.to_torch(reg_tree, num_blocks).items()}
    ema = {k: np.asarray(v, np.float32) for k, v in keymap.to_torch(ema_tree, num_blocks).items()}
    return reg, ema


def members(path):
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist() if not n.endswith(SERIAL)}, z.namelist()


@pytest.fixture(scope="module")
def full():
    return make_state(config())


@pytest.fixture(scope="module")
def lora_state():
    cfg, abstract, state = make_state(config(lora_rank=4))
    assert tree.flat(state["buffers"])[("net", "blocks", "fa", "attn", "to_q", "kernel")].dtype == jnp.bfloat16
    b = tree.flat(state["params"])[("net", "blocks", "mlp", "mlp", "layer1", "lora_b")]
    assert np.any(np.asarray(b))  # non-zero adapters: the merge matters
    return cfg, abstract, state


@pytest.mark.parametrize("which", ["full", "lora_state"])
def test_bit_identical_to_whole_state_export(which, request, tmp_path):
    cfg, _, state = request.getfixturevalue(which)
    scale = cfg.lora_alpha / cfg.lora_rank if cfg.lora_rank else 0.0
    reg_path, ema_path = export.export_pt(state, cfg.num_blocks, str(tmp_path / "new"), 7, lora_scale=scale)
    assert os.path.basename(reg_path) == "iter_000000007_reg_model.pt"
    assert os.path.basename(ema_path) == "iter_000000007_ema_model.pt"
    reg, ema = reference(state, cfg.num_blocks, scale)
    if cfg.lora_rank:  # the merge changed the kernels
        host = jax.device_get({"params": state["params"], "buffers": state["buffers"]})
        base = {p: a for top in ("params", "buffers") for p, a in tree.flat(host[top]).items()
                if p[-1] not in lora.LORA_LEAVES}
        unmerged = keymap.to_torch(base, cfg.num_blocks)
        key = "net.blocks.block1.blocks.2.block.layer1.weight"
        assert not np.array_equal(np.asarray(unmerged[key], np.float32), np.asarray(ema[key], np.float32))
    for path, want in ((reg_path, reg), (ema_path, ema)):
        got = torch.load(path, weights_only=True)
        assert list(got) == list(want)
        for k, v in want.items():
            t = got[k]
            assert tuple(t.shape) == v.shape and pt.tensor_to_numpy(t).dtype == v.dtype, k
            bits = np.uint16 if v.dtype == ml_dtypes.bfloat16 else np.uint32
            np.testing.assert_array_equal(pt.tensor_to_numpy(t).view(bits), v.view(bits), err_msg=k)
        # the same archive as torch.save of today's state dict, record for record (data.pkl included)
        ref = str(tmp_path / "ref" / os.path.basename(path))
        os.makedirs(os.path.dirname(ref), exist_ok=True)
        pt.save_state_dict(want, ref)
        (ours, our_names), (theirs, their_names) = members(path), members(ref)
        assert our_names == their_names and ours == theirs


def test_torch_loads_it_plain_and_mmap_with_upstream_keys(full, tmp_path):
    cfg, _, state = full
    table = keymap.torch_table(dit.shapes(build.abstract(cfg)), cfg.num_blocks)
    paths = export.export_pt(state, cfg.num_blocks, str(tmp_path), 3)
    for path, dtype in zip(paths, (torch.bfloat16, torch.float32), strict=True):
        for kw in ({}, {"mmap": True}):
            sd = torch.load(path, weights_only=True, **kw)
            assert [(k, tuple(v.shape)) for k, v in sd.items()] == [(k, tuple(s)) for k, s in table]
            assert all(v.dtype == dtype and v.is_contiguous() for v in sd.values())
        assert len(table) == len(keymap.HEAD) + cfg.num_blocks * len(keymap.BLOCK) + len(keymap.TAIL)
        with zipfile.ZipFile(path) as z:  # every record's data starts 64-byte aligned (as torch writes them)
            raw = open(path, "rb").read()
            for info in z.infolist():
                name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
                assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0, info.filename
                assert info.compress_type == zipfile.ZIP_STORED


def test_our_reader_reads_it(full, tmp_path):
    cfg, _, state = full
    reg_path, ema_path = export.export_pt(state, cfg.num_blocks, str(tmp_path), 1)
    for path in (reg_path, ema_path):
        sd = torch.load(path, weights_only=True)
        with PtIndex(path) as index:
            assert list(index.tensors) == list(sd) and not index.other
            for k, t in sd.items():
                np.testing.assert_array_equal(index.read(k), pt.tensor_to_numpy(t), err_msg=k)


def test_failure_mid_write_leaves_nothing(full, tmp_path, monkeypatch):
    cfg, _, state = full
    calls = {"n": 0}
    fetch = export._fetch
    block1 = 2 * (len(keymap.HEAD) + len(keymap.BLOCK))  # reg + EMA per key: the first fetch of block 1

    def failing(y):
        calls["n"] += 1
        if calls["n"] > block1:
            raise RuntimeError("device lost")
        return fetch(y)

    monkeypatch.setattr(export, "_fetch", failing)
    with pytest.raises(RuntimeError, match="device lost"):
        export.export_pt(state, cfg.num_blocks, str(tmp_path), 5)
    assert calls["n"] == block1 + 1
    assert os.listdir(tmp_path) == []  # neither final names nor .tmp files


@pytest.mark.parametrize("which", ["full", "lora_state"])
def test_sharded_and_host_states_export_the_same_bytes(which, request, tmp_path):
    cfg, _, state = request.getfixturevalue(which)
    c = config(cfg.lora_rank)
    _, _, two = make_state(c, fsdp=2)  # the same layout on a 2-device fsdp mesh, then the same values
    two = {top: jax.tree.map(lambda a, b: jax.device_put(np.asarray(a), b.sharding), state[top], two[top])
           for top in ("params", "buffers", "ema")}
    to_q = tree.flat(two["ema"])[("net", "blocks", "fa", "attn", "to_q", "lora_a" if cfg.lora_rank else "kernel")]
    assert len(to_q.sharding.device_set) == 2
    host = jax.device_get({top: state[top] for top in ("params", "buffers", "ema")})  # restore_job_weights' form
    scale = cfg.lora_alpha / cfg.lora_rank if cfg.lora_rank else 0.0
    outs = [export.export_pt(s, cfg.num_blocks, str(tmp_path / name), 2, lora_scale=scale)
            for name, s in (("one", state), ("two", two), ("host", host))]
    for files in zip(*outs, strict=True):
        first = members(files[0])
        assert all(members(f) == first for f in files[1:])


def test_nbytes_bounds_the_files_from_shapes_only(lora_state, full, tmp_path):
    for cfg, abstract, state in (full, lora_state):
        want = export.pt_export_nbytes(abstract, cfg.num_blocks)  # ShapeDtypeStructs of the whole train state
        assert want == export.pt_export_nbytes(state, cfg.num_blocks)
        paths = export.export_pt(state, cfg.num_blocks, str(tmp_path / str(cfg.lora_rank)), 4, lora_scale=1.0)
        got = sum(os.path.getsize(p) for p in paths)
        assert got <= want <= got + 1_000 * len(keymap.torch_table(
            dit.shapes(build.abstract(cfg)), cfg.num_blocks))


@pytest.mark.parametrize("kernel_dtype", [ml_dtypes.bfloat16, np.float32])
def test_merge_is_lora_merge_bit_for_bit(kernel_dtype):
    """At a 7B-like rank and width, with signed zeros: a matmul would differ from numpy's einsum in ~1e-5 of the
    bf16 values (and most fp32 ones); the device merge does not."""
    rng = np.random.default_rng(1)
    a = (rng.standard_normal((2, 512, 16)) * 0.02).astype(np.float32)
    b = (rng.standard_normal((2, 16, 768)) * 0.02).astype(np.float32)
    b[:, :, :4] = 0  # products -0 and +0: numpy's sum starts from +0
    a[:, :8] = -np.abs(a[:, :8])
    k = (rng.standard_normal((2, 512, 768)) * 0.02).astype(kernel_dtype)
    k[:, :8, :4] = -0.0
    path = ("net", "blocks", "mlp", "mlp", "layer1")
    tree = {path + ("kernel",): k, path + ("lora_a",): a, path + ("lora_b",): b}
    want = lora.merge(tree, 1.7)[path + ("kernel",)]
    entry = next(e for e in keymap.BLOCK if e.path == path + ("kernel",))
    bits = np.uint16 if kernel_dtype == ml_dtypes.bfloat16 else np.uint32
    for src in (tree, {p: jnp.asarray(v) for p, v in tree.items()}):  # host and device leaves
        for i in range(2):
            got = np.asarray(export._tensor(src, entry, i, np.float32(1.7), np.dtype(kernel_dtype)))
            np.testing.assert_array_equal(got.T.view(bits), want[i].view(bits))


@pytest.mark.parametrize("which", ["full", "lora_state"])
def test_export_job_of_a_saved_checkpoint(which, request, tmp_path):
    """export.export_job (`converters.orbax_to_pt`): host numpy arrays restored from a job's Orbax checkpoint, LoRA
    scale from its config.json; the same files as the export at save time."""
    cfg, _, state = request.getfixturevalue(which)
    job = tmp_path / "job"
    mngr = checkpoint.Manager(str(job), max_to_keep=1, async_save=False)
    mngr.save(6, {k: state[k] for k in ("step", "params", "buffers", "ema")}, {}, {"seed": 0, "step": 6})
    mngr.close()
    (job / "config.json").write_text(config(cfg.lora_rank).to_json())
    written = export.export_job(str(job), str(tmp_path / "pt"))
    scale = cfg.lora_alpha / cfg.lora_rank if cfg.lora_rank else 0.0
    expected = export.export_pt(state, cfg.num_blocks, str(tmp_path / "direct"), 6, lora_scale=scale)
    assert [os.path.basename(p) for p in written] == [os.path.basename(p) for p in expected]
    for a, b in zip(written, expected, strict=True):
        assert members(a) == members(b)


def test_export_job_refuses_a_full_disk_before_writing(full, tmp_path, monkeypatch):
    """export_job on a disk without room for both files: one message naming the folder and the sizes, nothing
    written; a write that fails half way (ENOSPC) leaves no partial file either."""
    cfg, _, state = full
    job = tmp_path / "job"
    mngr = checkpoint.Manager(str(job), max_to_keep=1, async_save=False)
    mngr.save(3, {k: state[k] for k in ("step", "params", "buffers", "ema")}, {}, {"seed": 0, "step": 3})
    mngr.close()
    (job / "config.json").write_text(config(0).to_json())
    dst = tmp_path / "pt"
    needed = export.pt_export_nbytes(state, cfg.num_blocks)
    monkeypatch.setattr(checkpoint, "free_bytes", lambda folder: needed - 1)
    with pytest.raises(OSError, match=rf"not enough space in {dst} for the \.pt files of step 3: needs .* GB free "
                                      r"\(No space left on device\)"):
        export.export_job(str(job), str(dst))
    assert os.listdir(dst) == []
    monkeypatch.setattr(checkpoint, "free_bytes", lambda folder: 10**15)

    def enospc(self, key, arr):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(export.pt.PtWriter, "add", enospc)
    with pytest.raises(OSError, match="no partial file was left"):
        export.export_job(str(job), str(dst))
    assert os.listdir(dst) == []
