"""Where a compiled step's host-memory copies run, read from its optimized HLO (scheduled: text order = run order).

    python scripts/hlo_host_copies.py STEP.hlo.txt[.gz]   # from bench_train.py --dump_hlo or bench_transfer HLO_DIR

For every while-loop body that touches host memory (a layout with memory space S(5)), prints the body's
instructions in order, compressed: `H:<op>` an instruction with a host-memory operand or result (`~q1` when it runs
on another stream: backend_config operation_queue_id; `-start`/`-done` async halves), `C×k` k heavy kernels in a
row (gemm / cuDNN / triton custom calls and fusions), `.×k` k other instructions. A copy that can hide behind the
blocks' compute shows as `H:...-start`, then `C×k`, then `H:...-done`; one on the compute stream (no queue, no
start/done) runs in turn with the kernels.
"""

from __future__ import annotations

import gzip
import re
import sys

_INSTR = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (.*?) ([a-z][\w\-]*)\(")
_COMP = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$")
_HEAVY = re.compile(r'custom_call_target="(__cublas|__cudnn|__triton)|kind=kCustom|"fusion_backend_config":\{"kind":'
                    r'"(__triton_gemm|__cublas|__cudnn)')
_BOOKKEEPING = ("parameter", "get-tuple-element", "tuple", "bitcast", "constant")  # no data moved
_QUEUE = re.compile(r'"operation_queue_id":"([1-9]\d*)"')


def read(path: str) -> str:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as fh:
        return fh.read()


def computations(hlo: str) -> dict[str, list[str]]:
    """Computation name -> its instruction lines, in order."""
    comps, name = {}, None
    for line in hlo.splitlines():
        if m := _COMP.match(line):
            name = m.group(1)
            comps[name] = []
        elif name is not None and line.strip() == "}":
            name = None
        elif name is not None and _INSTR.match(line):
            comps[name].append(line)
    return comps


def loop_bodies(hlo: str) -> dict[str, list[str]]:
    """The while-loop bodies' instruction lines, in order, by computation name."""
    comps = computations(hlo)
    return {name: comps.get(name, []) for name in sorted(set(re.findall(r"\bbody=%?([\w.\-]+)", hlo)))}


def token(line: str) -> str:
    """One instruction's class: H:<op>[~qN], C, or '.'."""
    m = _INSTR.match(line)
    op = m.group(3)
    if "S(5)" in line and op not in _BOOKKEEPING:
        q = _QUEUE.search(line)
        return f"H:{op}" + (f"~q{q.group(1)}" if q else "")
    return "C" if _HEAVY.search(line) else "."


def compress(tokens: list[str]) -> str:
    out, prev, n = [], None, 0
    for t in [*tokens, None]:
        if t == prev and t in ("C", "."):
            n += 1
            continue
        if prev is not None:
            out.append(prev if prev.startswith("H:") or n == 1 else f"{prev}×{n}")
        prev, n = t, 1
    return " ".join(out)


def report(hlo: str) -> list[str]:
    lines = []
    for name, body in loop_bodies(hlo).items():
        tokens = [token(x) for x in body]
        hosts = [t for t in tokens if t.startswith("H:")]
        if hosts:
            lines.append(f"{name}: {len(tokens)} instructions, {len(hosts)} touch host memory, "
                         f"{sum(t == 'C' for t in tokens)} heavy kernels\n  {compress(tokens)}")
    return lines


def summary(hlo: str) -> str:
    """`report` as text, or a line saying that no loop body touches host memory."""
    lines = report(hlo)
    return "\n".join(lines) if lines else "no while body touches host memory"


def main(argv):
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    print(summary(read(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
