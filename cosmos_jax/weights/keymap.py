"""The one table between upstream state-dict keys and our parameter tree; every converter reads it.

Upstream keys are those of `ModuleDict{net: MultiviewExtensionGeneralDIT, logvar: ...}` (docs/upstream.md §4.6):
574 tensors for the 7B (571 trainable + 3 buffers). Our tree stacks the 28 blocks along a leading "layers" axis;
`Linear.weight` [out, in] is our `kernel` [in, out] (transpose). Nothing here imports torch: arrays are numpy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping

import numpy as np

Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Entry:
    torch_key: str  # "{i}" stands for the block index
    path: Path  # our parameter path; stacked entries have a leading layer axis
    transpose: bool  # torch Linear weight [out, in] <-> kernel [in, out]
    stacked: bool
    buffer: bool = False


def _lin(key: str, *path: str, stacked: bool = False) -> Entry:
    return Entry(key, tuple(path), transpose=True, stacked=stacked)


def _cp(key: str, *path: str, stacked: bool = False, buffer: bool = False) -> Entry:
    return Entry(key, tuple(path), transpose=False, stacked=stacked, buffer=buffer)


def _attn(sub: str, name: str) -> list[Entry]:
    pre = f"net.blocks.block{{i}}.blocks.{sub}"
    a = ("net", "blocks", name, "attn")
    return [
        _lin(f"{pre}.block.attn.to_q.0.weight", *a, "to_q", "kernel", stacked=True),
        _cp(f"{pre}.block.attn.to_q.1.weight", *a, "q_norm", "scale", stacked=True),
        _lin(f"{pre}.block.attn.to_k.0.weight", *a, "to_k", "kernel", stacked=True),
        _cp(f"{pre}.block.attn.to_k.1.weight", *a, "k_norm", "scale", stacked=True),
        _lin(f"{pre}.block.attn.to_v.0.weight", *a, "to_v", "kernel", stacked=True),
        _lin(f"{pre}.block.attn.to_out.0.weight", *a, "to_out", "kernel", stacked=True),
    ] + _adaln(pre, ("net", "blocks", name), stacked=True)


def _adaln(pre: str, path: tuple[str, ...], stacked: bool) -> list[Entry]:
    return [
        _lin(f"{pre}.adaLN_modulation.1.weight", *path, "adaln", "down", "kernel", stacked=stacked),
        _lin(f"{pre}.adaLN_modulation.2.weight", *path, "adaln", "up", "kernel", stacked=stacked),
    ]


# In the order of upstream's state dict (`dit_tiny.pt`, the released files): head, blocks, tail.
HEAD = [
    _lin("net.x_embedder.proj.1.weight", "net", "x_embedder", "kernel"),
    _cp("net.pos_embedder.seq", "net", "pos_embedder_seq", buffer=True),
    _lin("net.t_embedder.1.linear_1.weight", "net", "t_linear_1", "kernel"),
    _lin("net.t_embedder.1.linear_2.weight", "net", "t_linear_2", "kernel"),
    _lin("net.final_layer.linear.weight", "net", "final_layer", "linear", "kernel"),
    *_adaln("net.final_layer", ("net", "final_layer"), stacked=False),
    _cp("net.affline_norm.weight", "net", "affline_norm", "scale"),
]
BLOCK = _attn("0", "fa") + _attn("1", "ca") + [
    _lin("net.blocks.block{i}.blocks.2.block.layer1.weight", "net", "blocks", "mlp", "mlp", "layer1", "kernel",
         stacked=True),
    _lin("net.blocks.block{i}.blocks.2.block.layer2.weight", "net", "blocks", "mlp", "mlp", "layer2", "kernel",
         stacked=True),
    *_adaln("net.blocks.block{i}.blocks.2", ("net", "blocks", "mlp"), stacked=True),
]
TAIL = [
    _lin("net.repeat_frame_embedding.weight", "net", "repeat_frame_kernel"),
    _cp("net.repeat_frame_embedding.bias", "net", "repeat_frame_bias"),
    _cp("net.view_embeddings.weight", "net", "view_embeddings"),
    _cp("logvar.0.freqs", "logvar", "freqs", buffer=True),
    _cp("logvar.0.phases", "logvar", "phases", buffer=True),
    _lin("logvar.1.weight", "logvar", "linear", "kernel"),
]
ENTRIES: list[Entry] = HEAD + BLOCK + TAIL

# Transformer Engine stores FP8 metadata as `..._extra_state`; not a tensor parameter, skipped on load.
EXTRA_STATE_SUFFIX = "_extra_state"


def expand(num_blocks: int) -> Iterator[tuple[str, Entry, int | None]]:
    """(torch key, entry, block index or None) for every upstream tensor, in upstream's order."""
    for e in HEAD:
        yield e.torch_key, e, None
    for i in range(num_blocks):
        for e in BLOCK:
            yield e.torch_key.format(i=i), e, i
    for e in TAIL:
        yield e.torch_key, e, None


def torch_shape(entry: Entry, our_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Upstream's shape of one tensor (one block's slice for stacked entries) from our leaf shape."""
    shape = tuple(our_shape[1:] if entry.stacked else our_shape)
    return shape[::-1] if entry.transpose else shape


def torch_table(our_shapes: Mapping[Path, tuple[int, ...]], num_blocks: int) -> list[tuple[str, tuple[int, ...]]]:
    """The upstream key table [(key, shape)] implied by our tree's shapes."""
    _check_paths(our_shapes.keys())
    return [(key, torch_shape(e, our_shapes[e.path])) for key, e, _ in expand(num_blocks)]


def _check_paths(paths) -> None:
    mapped = {e.path for e in ENTRIES}
    ours = set(paths)
    if ours != mapped:
        raise AssertionError(f"key map out of date: unmapped {sorted(ours - mapped)}, missing {sorted(mapped - ours)}")


class StrictLoadError(ValueError):
    """A state dict that does not match the network: every problem is listed."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} key problem(s):\n  " + "\n  ".join(problems))


def key_problems(stored: Mapping[str, tuple[int, ...]], our_shapes: Mapping[Path, tuple[int, ...]],
                 num_blocks: int) -> list[str]:
    """Every unexpected (bar `_extra_state`), missing and mis-shaped upstream key of a state dict given as
    {key: shape}, against our tree's shapes: the one check behind every strict DiT load."""
    expected = {key: torch_shape(e, our_shapes[e.path]) for key, e, _ in expand(num_blocks)}
    problems = [f"unexpected key {k} {shape}" for k, shape in stored.items()
                if k not in expected and not k.endswith(EXTRA_STATE_SUFFIX)]
    for k, want in expected.items():
        if k not in stored:
            problems.append(f"missing key {k} (expected shape {want})")
        elif tuple(stored[k]) != want:
            problems.append(f"shape mismatch {k}: got {tuple(stored[k])}, expected {want}")
    return problems


def from_torch(state: Mapping[str, np.ndarray], our_shapes: Mapping[Path, tuple[int, ...]], num_blocks: int,
               source: str = "state dict") -> dict[Path, np.ndarray]:
    """Upstream state dict (numpy values) -> {our path: array}, strictly.

    Every key must be consumed (bar `_extra_state`), every leaf filled, every shape right; otherwise a
    StrictLoadError lists each missing, unexpected and mis-shaped key. dtypes are kept.
    """
    _check_paths(our_shapes.keys())
    problems = key_problems({k: tuple(np.shape(v)) for k, v in state.items()}, our_shapes, num_blocks)
    if problems:
        raise StrictLoadError(source, problems)
    out: dict[Path, np.ndarray] = {}
    for key, e, i in expand(num_blocks):
        value = state[key]
        arr = value.T if e.transpose else value
        if e.stacked:
            if e.path not in out:
                out[e.path] = np.empty(our_shapes[e.path], dtype=arr.dtype)
            out[e.path][i] = arr
        else:
            out[e.path] = np.asarray(arr)
    return out


def to_torch(tree: Mapping[Path, np.ndarray], num_blocks: int) -> dict[str, np.ndarray]:
    """{our path: array} -> upstream state dict (numpy), in upstream's key order."""
    _check_paths(tree.keys())
    out: dict[str, np.ndarray] = {}
    for key, e, i in expand(num_blocks):
        arr = np.asarray(tree[e.path])
        if e.stacked:
            arr = arr[i]
        out[key] = np.ascontiguousarray(arr.T if e.transpose else arr)
    return out
