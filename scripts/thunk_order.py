"""The order in which XLA's GPU runtime issues a compiled step's while-loop bodies: its host copies and its heavy
kernels, from the thunk sequence that `XLA_FLAGS=--xla_dump_to=DIR` writes
(`DIR/*jit_train_step*.thunk_sequence_after_thunk_passes.txt`; `scripts/aot_hlo.py --thunks DIR` makes one without a
GPU).

    python scripts/thunk_order.py DIR/module_0001.jit_train_step.thunk_sequence_after_thunk_passes.txt

For each while body, one letter per thunk, runs of a letter written `X*n`: `S` an async start (a host copy issued on
a side stream), `D` its done (the compute stream waits for it there), `G` a thunk with a GEMM or cuDNN call in it (a
command buffer holding one counts), `k` any other kernel or command buffer, `F` a copy run in line. Then the async
copies counted by the number of `G` thunks between their start and done: those with none cannot run under the
block's compute. (At XLA's default of two async copies in flight: `S S D S D ...` before the block's kernels.)
"""

from __future__ import annotations

import re
import sys

_ENTRY = re.compile(r"^(\s*)(\d+): (k\w+)\s*(?:\[.*?\])?\s*(.*)$")
_HEAVY = re.compile(r"gemm|cublas|kCuDnn|kGemm|cudnn", re.IGNORECASE)


def bodies(text: str) -> list[list[tuple[str, str]]]:
    """Each while body's top-level thunks, in order, as (kind, the thunk's text with its nested thunks)."""
    lines = text.splitlines()
    out = []
    for i, line in enumerate(lines):
        m = _ENTRY.match(line)
        if not (m and m.group(3) == "kWhile"):
            continue
        indent = len(m.group(1))
        j = next((k for k in range(i + 1, len(lines)) if lines[k].strip() == "body:"), None)
        if j is None:
            continue
        entries, inner = [], None
        for line2 in lines[j + 1:]:
            e = _ENTRY.match(line2)
            if e and len(e.group(1)) <= indent:  # back at the loop's own level: the body ended
                break
            if e and inner is None:
                inner = len(e.group(1))
            if e and len(e.group(1)) == inner:
                entries.append([e.group(3), line2])
            elif entries:  # a nested thunk (a command buffer's, an async start's) or a continuation
                entries[-1][1] += "\n" + line2
        out.append([(k, t) for k, t in entries])
    return out


def letters(body: list[tuple[str, str]]) -> list[tuple[str, str | None]]:
    """(letter, async id) for each thunk of a body."""
    out = []
    for kind, text in body:
        aid = re.search(r"async_id=(\d+)", text)
        if kind == "kAsyncStart":
            out.append(("S", aid.group(1) if aid else None))
        elif kind == "kAsyncDone":
            out.append(("D", aid.group(1) if aid else None))
        elif kind in ("kDynamicSliceFusion", "kCopy"):
            out.append(("F", None))
        else:
            out.append(("G" if _HEAVY.search(text) else "k", None))
    return out


def compress(seq: str) -> str:
    """Runs of one letter as `X*n`, runs of a pair as `(XY)*n` (more than three)."""
    seq = re.sub(r"(..)\1{3,}", lambda m: f" ({m.group(1)})*{len(m.group(0)) // 2} ", seq)
    return re.sub(r"([A-Za-z])\1{3,}", lambda m: f" {m.group(1)}*{len(m.group(0))} ", seq).replace("  ", " ").strip()


def under(seq: list[tuple[str, str | None]]) -> dict[int, int]:
    """How many async copies have k heavy thunks between their start and done, by k."""
    start, out = {}, {}
    for j, (c, aid) in enumerate(seq):
        if c == "S":
            start[aid] = j
        elif c == "D" and aid in start:
            k = sum(x == "G" for x, _ in seq[start.pop(aid):j])
            out[k] = out.get(k, 0) + 1
    return dict(sorted(out.items()))


def report(text: str) -> list[str]:
    out = []
    for i, body in enumerate(bodies(text)):
        seq = letters(body)
        counts = under(seq)
        out.append(f"while {i}: {len(seq)} thunks, {sum(c == 'G' for c, _ in seq)} with GEMM/cuDNN; "
                   f"{sum(counts.values())} async copies, by GEMM/cuDNN thunks between start and done: {counts}\n  "
                   + compress("".join(c for c, _ in seq)))
    return out


def main(argv):
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1]) as fh:
        lines = report(fh.read())
    print("\n".join(lines) if lines else f"{argv[1]}: no while loop in this thunk sequence")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
