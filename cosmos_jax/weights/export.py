"""Our weights out as upstream files: the streamed `.pt` export of a train state, a job's checkpoint or a converted
folder as `.pt`, and LoRA adapters alone in PEFT's layout.

`export_pt` writes `iter_{N:09d}_reg_model.pt` (bf16, every floating tensor, buffers included) and
`iter_{N:09d}_ema_model.pt` (fp32) with upstream keys in upstream order (cosmos_jax/weights/keymap.py), LoRA adapters
merged. Both files are open at once (`PtWriter` of cosmos_jax/weights/pt.py, no torch); for each key, in order (head,
block 0..L-1, tail), the tensor is sliced to its block on the device by a jitted function (the block index is an
argument, so one compilation serves every block), the adapters are merged there, it is cast to the file's dtype and
transposed to torch's layout, then fetched, written and freed; the next tensor is computed while one is written. Host
memory grows by a few of the largest tensors, not by the model (7B on an H200: +1.4 GB, 43 GB written in ~75 s;
scripts/bench_export_memory.py).

The files are bit-identical to the whole-state algorithm (lora.merge + keymap.to_torch + numpy casts): the merge
`kernel + scale * (a @ b)` is computed as numpy's einsum does it, a sum of rank-1 products in order with each
product and each sum rounded to fp32 separately (see `_merge`), then rounded to the kernel's dtype.

Multi-process: every process calls `export_pt` (arrays sharded over other processes' devices are all-gathered one
tensor at a time); process 0 writes. `state` may also hold host numpy arrays (dit.restore_job_weights): those
are sliced on the host and the slice is processed on the default device.

`export(src, dst)` (`python -m converters.orbax_to_pt`) writes the same two files from a job's checkpoint
(`export_job`, LoRA adapters merged with the job's alpha / rank), or `model.pt` of a converted folder in its stored
dtype (`export_base`: `.pt -> folder -> .pt` is bit-exact), streamed one block folder at a time. `export_adapters`
writes `<stem>.safetensors` (`<upstream module>.lora_A.weight` [r, in], `.lora_B.weight` [out, r]) + `<stem>.json`.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from cosmos_jax import lora, offload
from cosmos_jax.models import build
from cosmos_jax.weights import checkpoint, dit, folder, keymap, pt, tree

REG_DTYPE = np.dtype(ml_dtypes.bfloat16)
EMA_DTYPE = np.dtype(np.float32)
_NAME_LEN = len("iter_000000000_reg_model.pt")


def _sources(state) -> tuple[dict, dict]:
    """({path: leaf} the reg file is made of, the same for the EMA file); adapters (lora_a, lora_b) included."""
    buffers = tree.flat(state.get("buffers", {}))
    reg = {**tree.flat(state["params"]), **buffers}
    return reg, ({**tree.flat(state["ema"]), **buffers} if "ema" in state else None)


def _table(src: dict, num_blocks: int) -> list[tuple[str, keymap.Entry, int | None, tuple[int, ...]]]:
    """(torch key, entry, block index or None, torch shape) of every tensor, in upstream's order."""
    shapes = {p: tuple(a.shape) for p, a in src.items() if p[-1] not in lora.LORA_LEAVES}
    table = keymap.torch_table(shapes, num_blocks)  # checks that the tree and the key map agree
    return [(key, e, i, shape) for (key, e, i), (_, shape) in zip(keymap.expand(num_blocks), table, strict=True)]


def pt_export_nbytes(state_or_abstract, num_blocks: int) -> int:
    """Bytes the two files of `export_pt` will take (an upper bound within a few hundred bytes a tensor), from
    shapes only: works on trees of jax.ShapeDtypeStruct (e.g. the abstract train state)."""
    reg, _ = _sources(state_or_abstract)
    table = _table(reg, num_blocks)
    return sum(pt.pt_nbytes([(k, s, d) for k, _, _, s in table], _NAME_LEN) for d in (REG_DTYPE, EMA_DTYPE))


def _block(x, i):
    """Block i of a stacked leaf (the whole leaf when i is None), in device memory (a host-resident EMA,
    config.offload, is sliced first, so one block crosses)."""
    x = x if i is None else jax.lax.dynamic_index_in_dim(x, i, keepdims=False)
    return offload.on_device(x)


@jax.jit
def _adapters_f64(a, b, i, scale):
    """Block i's adapters and the scale as fp64 arrays (exact: they are fp32 values). Made in a computation of
    their own so that the merge sees fp64 inputs, not conversions it could narrow back to fp32 (see _merge)."""
    f64 = jnp.float64
    return _block(a, i).astype(jnp.float32).astype(f64), _block(b, i).astype(jnp.float32).astype(f64), \
        jnp.asarray(scale, jnp.float32).astype(f64)


@jax.jit
def _merge(kernel, i, a64, b64, scale64):
    """lora.merge of block i's kernel, bit for bit: (kernel_f32 + (a @ b) * scale).astype(kernel.dtype), where
    numpy's einsum over the stacked arrays sums the rank-1 products in order from 0, rounding each product and each
    sum to fp32. A product of two fp32 values taken in fp64 is exact, so rounding it to fp32 is the fp32 product;
    because its inputs are fp64 arrays (not conversions of fp32 values), the compiler can neither narrow it to an
    fp32 multiply nor fuse it with the following sum into an FMA (one rounding instead of two), which is why the
    merged kernels are bit-identical to lora.merge (a matmul is not)."""
    f32 = jnp.float32
    delta = None
    for j in range(a64.shape[-1]):
        term = (a64[:, j:j + 1] * b64[j:j + 1, :]).astype(f32)
        # numpy starts from 0 and 0 + (-0) = +0 (XLA would simplify an explicit `0 + term` to term)
        delta = jnp.where(term == 0, jnp.zeros((), f32), term) if delta is None else delta + term
    delta = (delta.astype(jnp.float64) * scale64).astype(f32)
    base = _block(kernel, i)
    return (base.astype(f32) + delta).astype(base.dtype)


def _merged(kernel, a, b, i, scale):
    with jax.enable_x64(True):
        return _merge(kernel, i, *_adapters_f64(a, b, i, scale))


@functools.partial(jax.jit, static_argnames=("transpose", "dtype"))
def _device_tensor(x, i, *, transpose: bool, dtype):
    """One upstream tensor from our leaf: block `i` (None: not stacked), cast as numpy's
    np.asarray(v, np.float32).astype(dtype), transposed to torch's layout."""
    x = _block(x, i).astype(jnp.float32).astype(dtype)
    return x.T if transpose else x


def _tensor(src: dict, entry: keymap.Entry, i: int | None, scale, dtype: np.dtype):
    """Dispatch the device computation of one tensor of one file (not yet fetched)."""
    x = src[entry.path]
    lora_a = entry.path[:-1] + ("lora_a",)
    ab = (src[lora_a], src[entry.path[:-1] + ("lora_b",)]) if entry.path[-1] == "kernel" and lora_a in src else ()
    if i is not None and not all(isinstance(t, jax.Array) for t in (x, *ab)):  # host arrays: slice on the host
        x, ab, i = x[i], tuple(t[i] for t in ab), None
    idx = None if i is None else np.int32(i)
    if ab:
        x, idx = _merged(x, *ab, idx, scale), None
    return _device_tensor(x, idx, transpose=entry.transpose, dtype=dtype)


def _prefetch(y) -> None:
    if isinstance(y, jax.Array) and y.is_fully_addressable:
        y.copy_to_host_async()


def _fetch(y) -> np.ndarray:
    """The array on the host (all-gathered when it spans other processes; every process must call it)."""
    if not isinstance(y, jax.Array) or y.is_fully_addressable:
        return np.asarray(jax.device_get(y))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(y, tiled=True))


def _stream(reg_src: dict, ema_src: dict, table, scale) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(key, reg array, EMA array) in order; the next tensor is computed and copied while one is written."""
    pending = None
    for key, e, i, _ in table:
        ys = (_tensor(reg_src, e, i, scale, REG_DTYPE), _tensor(ema_src, e, i, scale, EMA_DTYPE))
        for y in ys:
            _prefetch(y)
        if pending is not None:
            yield pending[0], _fetch(pending[1][0]), _fetch(pending[1][1])
        pending = (key, ys)
    if pending is not None:
        yield pending[0], _fetch(pending[1][0]), _fetch(pending[1][1])


def export_pt(state, num_blocks: int, out_dir: str, step: int, lora_scale: float = 0.0) -> tuple[str, str] | None:
    """`iter_{N:09d}_reg_model.pt` (bf16) and `_ema_model.pt` (fp32) in `out_dir`, streamed (see the module
    docstring); LoRA adapters merged with `lora_scale` (alpha / rank). Every process calls it; returns
    (reg_path, ema_path) on process 0, None elsewhere. Nothing is left under the final names unless both files are
    complete, and no temporary file is left after an error."""
    reg_src, ema_src = _sources(state)
    if ema_src is None:
        raise KeyError("export_pt: the state has no 'ema'")
    table = _table(reg_src, num_blocks)
    _table(ema_src, num_blocks)
    reg_path, ema_path = checkpoint.export_paths(out_dir, step)
    writing = jax.process_index() == 0
    writers: list[pt.PtWriter] = []
    try:
        if writing:
            os.makedirs(out_dir, exist_ok=True)
            for path, dtype in ((reg_path, REG_DTYPE), (ema_path, EMA_DTYPE)):
                writers.append(pt.PtWriter(path, [(k, s, dtype) for k, _, _, s in table]))
        for key, reg, ema in _stream(reg_src, ema_src, table, np.float32(lora_scale)):
            if writing:
                writers[0].add(key, reg)
                writers[1].add(key, ema)
            del reg, ema
        for w in writers:
            w.finish()
    except BaseException:
        for w in writers:
            w.abort()
        raise
    for w in writers:
        w.commit()
    return (reg_path, ema_path) if writing else None


# ---- a job's checkpoint or a converted folder as .pt -----------------------------------------------------------------

def _ensure_space(dst: str, needed: int, what: str) -> None:
    """Refuse before writing when `dst` has less free space than `needed` (files there are replaced only once the
    new ones are complete, so they do not count as free)."""
    present = sorted(n for n in os.listdir(dst) if n.endswith(".pt"))
    checkpoint.ensure_space(dst, needed, what, f"; already there: {', '.join(present)}" if present else "")


def _job_lora_scale(src: str, state) -> float:
    """alpha / rank of a LoRA job (from its config.json); 0 for a full fine-tune."""
    if not lora.has_lora(tree.flat(state["params"])):
        return 0.0
    cfg = build.dit_config(checkpoint.job_config(os.path.dirname(os.path.abspath(checkpoint.orbax_root(src)))))
    if not cfg.lora_rank:
        raise ValueError(f"{src}: the checkpoint holds LoRA adapters but its config.json has no lora.rank")
    return lora.scale(cfg.lora_rank, cfg.lora_alpha)


def export_job(src: str, dst: str, step: int | None = None) -> list[str]:
    """Reg + EMA `.pt` of a job's checkpoint (restores only params, buffers and EMA, on the CPU; LoRA adapters
    merged with the job's alpha / rank)."""
    step, state = dit.restore_job_weights(src, step)
    reg, _ = _sources(state)
    num_blocks = int(np.shape(reg[("net", "blocks", "fa", "attn", "to_q", "kernel")])[0])
    os.makedirs(dst, exist_ok=True)
    _ensure_space(dst, pt_export_nbytes(state, num_blocks), f"the .pt files of step {step}")
    try:
        return list(export_pt(state, num_blocks, dst, step, lora_scale=_job_lora_scale(src, state)))
    except OSError as e:  # the writers removed their temporary files
        raise OSError(f"writing the .pt files of step {step} to {dst} failed: {e}; no partial file was left") from e


def export_base(src: str, dst: str) -> str:
    """`model.pt` of a converted folder, in its stored dtypes; streamed: the non-block tensors, then one block
    folder at a time."""
    n = folder.read_meta(src)["num_blocks"]
    stored = {p[1:]: (shape, dtype) for p, (shape, dtype) in folder.flat_metadata(src).items()}
    table = keymap.torch_table({p: shape for p, (shape, _) in stored.items()}, n)
    entries = [(key, shape, np.dtype(stored[e.path][1])) for (key, shape), (_, e, _) in
               zip(table, keymap.expand(n), strict=True)]
    os.makedirs(dst, exist_ok=True)
    out = os.path.join(dst, "model.pt")
    _ensure_space(dst, pt.pt_nbytes(entries, len("model.pt")), "model.pt")
    rest, block, block_i = folder.read_part(src, folder.REST), None, None
    with pt.PtWriter(out, entries) as w:
        for (key, e, i), (_, _, dtype) in zip(keymap.expand(n), entries, strict=True):
            if i is None:
                arr = rest[e.path]
            else:
                if block_i != i:
                    block, block_i = None, i
                    block = folder.read_part(src, folder.block_dir(i))
                arr = block[e.path]
            w.add(key, np.ascontiguousarray(arr.T if e.transpose else arr).astype(dtype, copy=False))
    return out


def export(src: str, dst: str, step: int | None = None) -> list[str]:
    """The `.pt` files of a converted folder (`export_base`) or of a job directory / its orbax folder
    (`export_job`, the latest step or `step`)."""
    if folder.MARKER.marked(src):
        return [export_base(src, dst)]
    if checkpoint.complete_steps(src):
        return export_job(src, dst, step)
    raise FileNotFoundError(f"{src}: neither a job directory with orbax/<step>/ nor converted base weights "
                            "(meta.json)")


# ---- LoRA adapters alone ---------------------------------------------------------------------------------------------

def export_adapters(flat_tree: dict, num_blocks: int, path_stem: str, rank: int, alpha: float, targets) -> str:
    """`<stem>.safetensors` + `<stem>.json`: the adapters under upstream module names (PEFT layout)."""
    from safetensors.numpy import save_file

    by_path = {e.path[:-1]: e for e in keymap.ENTRIES if e.stacked and e.path[-1] == "kernel"}
    tensors = {}
    for p, a in flat_tree.items():
        if p[-1] not in lora.LORA_LEAVES:
            continue
        module = by_path[p[:-1]].torch_key.removesuffix(".weight")
        name = "lora_A" if p[-1] == "lora_a" else "lora_B"
        for i in range(num_blocks):
            tensors[f"{module.format(i=i)}.{name}.weight"] = np.ascontiguousarray(np.asarray(a[i], np.float32).T)
    tmp = f"{path_stem}.safetensors.tmp"
    save_file(tensors, tmp)
    os.replace(tmp, f"{path_stem}.safetensors")
    with open(f"{path_stem}.json", "w") as f:
        json.dump({"r": rank, "lora_alpha": alpha, "target_modules": list(targets),
                   "scale": lora.scale(rank, alpha), "format": "W' = W + lora_alpha / r * B @ A (torch layout)"},
                  f, indent=2)
    return f"{path_stem}.safetensors"
