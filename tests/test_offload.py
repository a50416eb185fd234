"""config.offload: Adam moments and EMA in pinned host memory, streamed through the update block by block. The same
losses and weights as the plain step, on one device and on an fsdp mesh, with a checkpoint round trip."""

import os

import jax
import numpy as np
import pytest

from configs import demo
from cosmos_jax import offload, offload_overlap, optim, sharding
from cosmos_jax import step as step_lib
from cosmos_jax import train_state as ts
from cosmos_jax.models import build
from cosmos_jax.weights import checkpoint, tree
from cosmos_jax.weights import tokenizer as tok
from scripts import hlo_host_copies

BOTH = ("opt_state", "ema")


def tiny(offload_parts=(), lora=False):
    c = demo.get_config()
    c.model.update(dict(model_channels=32, num_blocks=3, num_heads=2, crossattn_emb_channels=8, adaln_lora_dim=8))
    c.data.video_size = (16, 16)
    c.optim.warmup_steps = 2  # large updates: a wrong moment or count shows
    c.ema.s = 0.3
    c.offload = offload_parts
    if lora:
        c.lora.update(dict(rank=4, alpha=8.0, targets=("to_q", "to_v", "layer1")))
    return c


def batch(seed):
    rng = np.random.default_rng(seed)
    return {"video": rng.integers(0, 255, (1, 2, 3, 9, 16, 16, 3)).astype(np.uint8),
            "text": rng.standard_normal((1, 2, 3, 512, 8)).astype(np.float32),
            "view_idx": np.tile(np.array([[[0, 1, 2]]], np.int32), (1, 2, 1)), "fps": np.full((1, 2), 10.0, np.float32),
            "frame_repeat": np.zeros((1, 2, 3), np.float32)}


def run(c, mesh, steps=3, state=None, start=0):
    """(state, losses) after `steps` jitted, donated steps (a fresh state unless given)."""
    cfg, tx = build.dit_config(c), optim.make(c)
    graphdef, abstract, sh = ts.layout(cfg, tx, mesh, offload=tuple(c.offload))
    batch_sh = sharding.batch_sharding(mesh, leading_axes=1)
    step = step_lib.jit_train_step(sh, batch_sh, graphdef=graphdef, tx_parts=optim.parts(c),
                                   cfg=step_lib.StepConfig.from_config(c), tokenizer=tok.from_config(c))
    losses = []
    with sharding.activate(mesh):
        state = ts.create(cfg, tx, mesh, sh) if state is None else state
        for i in range(start, start + steps):
            state, m = step(state, sharding.put_batch(batch(i), batch_sh, 2), jax.random.key(i))
            losses.append(float(m["loss"]))
    return state, losses, sh, abstract


def kinds(tree):
    return {a.sharding.memory_kind for a in jax.tree.leaves(tree) if a.ndim}


def assert_same_state(a, b, rtol):
    for part in ("params", "ema"):
        for (p, x), y in zip(tree.flat(a[part]).items(), tree.flat(b[part]).values(), strict=True):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=1e-7, err_msg=f"{part} {p}")
    for x, y in zip(jax.tree.leaves(a["opt_state"]), jax.tree.leaves(b["opt_state"]), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=1e-12)


@pytest.mark.parametrize("mesh_spec,lora", [((("data", 1), ("fsdp", 2), ("context", 1)), False),  # one device: below
                                            ((("data", 1), ("fsdp", 1), ("context", 1)), True)])
def test_offloaded_steps_match_the_plain_step(mesh_spec, lora):
    n = dict(mesh_spec)["fsdp"]
    mesh = sharding.make_mesh(mesh_spec, devices=jax.devices()[:n])
    plain, plain_losses, _, _ = run(tiny((), lora), mesh)
    off, off_losses, _, _ = run(tiny(BOTH, lora), mesh)
    assert kinds(off["ema"]) == {"pinned_host"} and kinds(off["opt_state"]) == {"pinned_host"}
    assert kinds(off["params"]) == {"device"} and kinds(plain["opt_state"]) == {"device"}
    assert int(off["opt_state"][1][0].count) == 3
    np.testing.assert_allclose(off_losses, plain_losses, rtol=1e-6)
    assert_same_state(off, plain, rtol=1e-6)
    # the EMA moved away from the weights and the weights from their start: the comparison is not vacuous
    start = ts.create(build.dit_config(tiny((), lora)), optim.make(tiny()), mesh,
                      ts.layout(build.dit_config(tiny((), lora)), optim.make(tiny()), mesh)[2])
    k = next(iter(tree.flat(plain["params"])))
    assert not np.allclose(np.asarray(tree.flat(plain["params"])[k]), np.asarray(tree.flat(start["params"])[k]))


def test_only_the_ema_offloaded():
    mesh = sharding.one_device_mesh()
    plain, plain_losses, _, _ = run(tiny(()), mesh, steps=2)
    off, off_losses, _, _ = run(tiny(("ema",)), mesh, steps=2)
    assert kinds(off["ema"]) == {"pinned_host"} and kinds(off["opt_state"]) == {"device"}
    np.testing.assert_allclose(off_losses, plain_losses, rtol=1e-6)
    assert_same_state(off, plain, rtol=1e-6)


def test_the_update_keeps_no_second_copy_of_the_offloaded_state():
    """The block loop writes each block back into the carried buffers: the offloaded step's temporaries are the
    plain step's plus a few blocks of moments and EMA, not a stacked second copy of them (measured on an H100 with
    a scan: host temporaries as large as the offloaded state, 80 GiB at 28 blocks)."""
    mesh = sharding.one_device_mesh()

    def compiled(parts):
        c = tiny(parts)
        c.model.update(dict(num_blocks=8, model_channels=128))
        cfg, tx = build.dit_config(c), optim.make(c)
        graphdef, abstract, sh = ts.layout(cfg, tx, mesh, offload=parts)
        batch_sh = sharding.batch_sharding(mesh, leading_axes=1)
        step = step_lib.jit_train_step(sh, batch_sh, graphdef=graphdef, tx_parts=optim.parts(c),
                                       cfg=step_lib.StepConfig.from_config(c), tokenizer=tok.from_config(c))
        with sharding.activate(mesh):
            data = sharding.put_batch(batch(0), batch_sh, 2)
            ma = step.lower(abstract, data, jax.random.key(0)).compile().memory_analysis()
        blocks = [a for part in ("opt_state", "ema") for p, a in tree.flat(abstract[part]).items()
                  if offload.BLOCKS[1] in str(p) and a.ndim]
        return ma.temp_size_in_bytes + ma.host_temp_size_in_bytes, sum(a.size * a.dtype.itemsize for a in blocks)

    plain, state_bytes = compiled(())
    off, _ = compiled(BOTH)
    assert state_bytes > 0
    assert off - plain < 0.4 * state_bytes, (off - plain, state_bytes)


def loop_copies(hlo: str, shapes: set[str]) -> list[str]:
    """The `copy` instructions, inside while-loop bodies of the optimized HLO, of arrays shaped like one of `shapes`
    (e.g. "f32[8,128,384]"): XLA's copy of a whole stacked buffer in every iteration of a block loop."""
    return [line.strip()[:160] for body in hlo_host_copies.loop_bodies(hlo).values() for line in body
            if " copy(" in line and any(f"= {s}{{" in line for s in shapes)]


@pytest.mark.parametrize("overlap,prefetch", [(False, 1), (True, 1), (True, 2)])
def test_the_block_loops_copy_no_stacked_buffer(overlap, prefetch):
    """Each block is read from the stacked params/moments/EMA, and written back, with no reader of the old block
    after the write: otherwise XLA copies the whole stacked buffer in every iteration (an H100 step of the 6-block
    slice, with the next block fetched before the write, did not finish in 2 minutes). Not for offload_prefetch=0
    (block i read and written back in one iteration): the CPU compile copies there, the GPU compile does not
    (read from `python scripts/aot_hlo.py ... --config.offload_prefetch=0`)."""
    mesh = sharding.one_device_mesh()
    c = tiny(BOTH)
    c.model.update(dict(num_blocks=8, model_channels=64))
    c.offload_overlap, c.remat, c.offload_prefetch = overlap, "full", prefetch
    cfg, tx = build.dit_config(c), optim.make(c)
    graphdef, _, sh = ts.layout(cfg, tx, mesh, offload=BOTH)
    batch_sh = sharding.batch_sharding(mesh, leading_axes=1)
    step_sh = offload_overlap.shardings(sh) if overlap else sh
    step = step_lib.jit_train_step(step_sh, batch_sh, graphdef=graphdef, tx_parts=optim.parts(c),
                                   cfg=step_lib.StepConfig.from_config(c), tokenizer=tok.from_config(c))
    with sharding.activate(mesh):
        state = ts.create(cfg, tx, mesh, sh)
        state = offload_overlap.with_pending(state, sh) if overlap else state
        hlo = step.lower(state, sharding.put_batch(batch(0), batch_sh, 2), jax.random.key(0)).compile().as_text()
    shapes = {f"f32[{','.join(map(str, a.shape))}]" for p, a in tree.flat(state["ema"]).items()
              if offload.BLOCKS[1] in str(p) and a.size >= 8 * 512}  # the biases' few KB aside
    assert len(shapes) >= 5
    assert loop_copies(hlo, shapes) == []


def test_offloaded_state_saves_restores_and_resumes(tmp_path):
    """Orbax round trip of a host-resident state (restored onto host memory again), then the resumed steps equal
    an uninterrupted run; restoring the same checkpoint without offload works too (another placement)."""
    mesh = sharding.make_mesh((("data", 1), ("fsdp", 2), ("context", 1)), devices=jax.devices()[:2])
    whole, whole_losses, _, _ = run(tiny(BOTH), mesh, steps=3)
    first, _, sh, abstract = run(tiny(BOTH), mesh, steps=2)
    mngr = checkpoint.Manager(str(tmp_path / "job"), max_to_keep=1, async_save=False)
    mngr.save(2, first, {}, {"step": 2})
    mngr.close()
    restored, _, _ = checkpoint.Manager(str(tmp_path / "job"), 1).restore(2, abstract)
    assert kinds(restored["ema"]) == {"pinned_host"} and kinds(restored["opt_state"]) == {"pinned_host"}
    assert_same_state(restored, first, rtol=0)
    resumed, losses, _, _ = run(tiny(BOTH), mesh, steps=1, state=restored, start=2)
    np.testing.assert_allclose(losses, whole_losses[2:], rtol=1e-6)
    assert_same_state(resumed, whole, rtol=1e-6)
    _, plain_abstract, _ = ts.layout(build.dit_config(tiny()), optim.make(tiny()), mesh)
    on_device, _, _ = checkpoint.Manager(str(tmp_path / "job"), 1).restore(2, plain_abstract)
    assert kinds(on_device["ema"]) == {"device"}
    assert_same_state(on_device, first, rtol=0)
    one = sharding.one_device_mesh(jax.devices()[2])  # another mesh
    _, one_abstract, _ = ts.layout(build.dit_config(tiny()), optim.make(tiny()), one, offload=BOTH)
    moved, _, _ = checkpoint.Manager(str(tmp_path / "job"), 1).restore(2, one_abstract)
    assert kinds(moved["ema"]) == {"pinned_host"} and {d.id for a in jax.tree.leaves(moved) for d in a.devices()} == {2}
    assert_same_state(moved, first, rtol=0)


@pytest.mark.parametrize("value,msg", [(("moments",), "expected a tuple of distinct names"),
                                       (("ema", "ema"), "expected a tuple of distinct names")])
def test_bad_offload_values(value, msg):
    with pytest.raises(ValueError, match=msg):
        offload.check(value, True)
    with pytest.raises(ValueError, match="scan_blocks"):
        offload.check(("ema",), False)


def test_export_of_an_offloaded_state_is_the_same_file(tmp_path):
    from cosmos_jax.weights import export
    from tests.weights.test_export import members

    mesh = sharding.one_device_mesh()
    plain, _, _, _ = run(tiny(()), mesh, steps=1)
    off, _, _, _ = run(tiny(BOTH), mesh, steps=1)
    a = export.export_pt(plain, 3, str(tmp_path / "plain"), 1)
    b = export.export_pt(off, 3, str(tmp_path / "off"), 1)
    for x, y in zip(a, b, strict=True):
        assert members(x) == members(y)  # every member's bytes (the zip headers carry the write time)


def test_train_with_offload(tmp_path, monkeypatch):
    """The CLI's path: offloaded state with the overlapped update, validation and samples from the host-resident
    EMA, save, export, resume."""
    from cosmos_jax import train
    from tests.data import fixtures as fx
    from tests.test_rerun import config

    data = fx.build(str(tmp_path / "ds"), clips=(12, 10))
    fx.build(str(tmp_path / "ds" / "heldout"), clips=(10,))
    c = config(data)
    c.offload = BOTH
    c.offload_overlap = True  # the update in the next step's forward pass: flushed before save / export / validation
    monkeypatch.setenv("OUTPUT_ROOT", str(tmp_path / "out"))
    first = train.train(c, progress=False, devices=jax.devices()[:1])
    jdir = first["job_dir"]
    assert first["final"]["step"] == 2 and np.isfinite(first["final"]["val_loss_ema"])
    assert sorted(n for n in os.listdir(os.path.join(jdir, "checkpoints")) if n.endswith(".pt")) == [
        "iter_000000002_ema_model.pt", "iter_000000002_reg_model.pt"]
    c.max_iter = 3
    c.offload, c.offload_overlap = (), False  # placement is not structure: the rerun resumes on the device
    c.data.val_dataset_dir = str(tmp_path / "none")  # validation of the rerun off: one compile fewer
    second = train.train(c, progress=False, devices=jax.devices()[:1])
    assert second["final"]["step"] == 3 and np.isfinite(second["final"]["loss"])


def test_host_memory_limit_raised_for_offload_only(monkeypatch):
    # JAX's pinned-host allocator stops at 64 GB unless told otherwise: the 7B's host-resident state is 81 GiB
    monkeypatch.delenv(offload.HOST_LIMIT_VAR, raising=False)
    assert offload.raise_host_memory_limit(()) is None
    assert offload.HOST_LIMIT_VAR not in os.environ
    ram_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    limit = offload.raise_host_memory_limit(("opt_state", "ema"))
    assert limit == int(0.9 * ram_gb) and os.environ[offload.HOST_LIMIT_VAR] == str(limit)
    monkeypatch.setenv(offload.HOST_LIMIT_VAR, "7")  # the user's own value is kept
    assert offload.raise_host_memory_limit(("ema",)) is None and os.environ[offload.HOST_LIMIT_VAR] == "7"


def test_command_buffer_flag_added_for_offload_only(monkeypatch):
    # XLA's CUDA graphs ran the streaming loops' host copies one after another on the compute stream (H100 trace)
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
    assert offload.keep_host_copies_async(()) is None and os.environ["XLA_FLAGS"] == "--xla_dump_to=/tmp/x"
    flag = offload.keep_host_copies_async(("opt_state",))
    assert flag == f"--xla_gpu_enable_command_buffer={offload.COMMAND_BUFFER_TYPES}"
    assert os.environ["XLA_FLAGS"] == f"--xla_dump_to=/tmp/x {flag}"
    assert "WHILE" not in flag and "CONDITIONAL" not in flag and "COPY" not in flag
    monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_enable_command_buffer=")  # the user's own choice is kept
    assert offload.keep_host_copies_async(("ema",)) is None
    assert os.environ["XLA_FLAGS"] == "--xla_gpu_enable_command_buffer="


def test_prepare_backend_sets_both_for_offload_only(monkeypatch):
    monkeypatch.delenv(offload.HOST_LIMIT_VAR, raising=False)
    monkeypatch.setenv("XLA_FLAGS", "")
    assert offload.prepare_backend(()) == [] and offload.HOST_LIMIT_VAR not in os.environ
    done = offload.prepare_backend(("opt_state", "ema"))
    assert len(done) == 2 and os.environ[offload.HOST_LIMIT_VAR] in done[0]
    assert os.environ["XLA_FLAGS"] == f"{offload.COMMAND_BUFFER_FLAG}={offload.COMMAND_BUFFER_TYPES}"
