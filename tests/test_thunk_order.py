"""scripts/thunk_order.py: the order of a loop body's host copies and heavy kernels, on a hand-written thunk
sequence in the format XLA dumps (`*.thunk_sequence_after_thunk_passes.txt`)."""

from scripts import thunk_order as to

# One while loop: two write-backs started before the block's GEMM command buffer and cuDNN call, waited for after
# them; one fetch started and waited for with nothing between; an inline slice copy. Then a top-level thunk.
SEQ = """001: kCustomKernel  [source | sink] loop_fusion grid: [1, 1, 1] threads: [1, 1, 1]
010: kWhile         [prev=000 (3)   | next=099 (1)  ]
condition:
    011: kCustomKernel [source | sink] loop_compare_fusion grid: [1, 1, 1] threads: [1, 1, 1]
  body:
    014: kAsyncStart         [source         | next=015 (1) ] stream=computation_stream[0], async_id=14
        013: kDynamicSliceFusion [source | sink] params=1, results=1
    015: kAsyncDone          [source         | sink         ] async_id=14
    016: kDynamicSliceFusion [source         | next=018 (1) ] params=1, results=1
    018: kAsyncStart         [prev=016 (1)   | next=021 (1) ] stream=computation_stream[1], async_id=18
        017: kDynamicSliceFusion [source | sink] params=1, results=1
    020: kAsyncStart         [prev=016 (1)   | next=021 (1) ] stream=computation_stream[2], async_id=20
        019: kDynamicSliceFusion [source | sink] params=1, results=1
    000: kCommandBuffer      [prev=016 (1)   | next=022 (1) ]
        021: kCustomKernel [source | sink] gemm_fusion_dot_7 grid: [2048, 1, 1] threads: [64, 1, 1]
        022: kCustomKernel [source | sink] loop_add_fusion grid: [2048, 1, 1] threads: [64, 1, 1]
    023: kCuDnn              [prev=000 (1)   | next=024 (1) ] kCuDnn
    024: kCustomKernel       [prev=023 (1)   | next=025 (1) ] loop_select_fusion grid: [8, 1, 1] threads: [64, 1, 1]
    025: kAsyncDone          [source         | sink         ] async_id=18
    026: kAsyncDone          [source         | sink         ] async_id=20
099: kCustomKernel  [prev=010 (1) | sink] loop_fusion grid: [1, 1, 1] threads: [1, 1, 1]
"""


def test_the_body_in_issue_order():
    (body,) = to.bodies(SEQ)  # the condition and the thunks outside the loop are not in it
    seq = to.letters(body)
    assert "".join(c for c, _ in seq) == "SDFSSGGkDD"
    # the fetch has no heavy thunk under it, the two write-backs have the command buffer's GEMM and the cuDNN call
    assert to.under(seq) == {0: 1, 2: 2}


def test_report_and_compress():
    (line,) = to.report(SEQ)
    assert line.startswith("while 0: 10 thunks, 2 with GEMM/cuDNN; 3 async copies")
    assert line.endswith("SDFSSGGkDD")
    assert to.compress("kSSSSSSGG") == "k S*6 GG"
    assert to.compress("SDSDSDSDk") == "(SD)*4 k"


def test_no_loop(tmp_path, capsys):
    f = tmp_path / "seq.txt"
    f.write_text("001: kCustomKernel  [source | sink] loop_fusion\n")
    assert to.main(["thunk_order.py", str(f)]) == 0
    assert "no while loop" in capsys.readouterr().out
    assert to.main(["thunk_order.py"]) == 2
