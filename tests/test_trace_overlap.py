"""scripts/trace_overlap.py: copy time under kernels and alone, from a profiler trace's GPU streams."""

import gzip
import json

import pytest

from scripts import trace_overlap as to


def _trace():
    """GPU: kernels 0-100 ms and 150-200 ms on stream 7 (named, as XLA's compute stream is, after every kind of
    work it carried); H2D 80-120 ms and D2H 90-160 ms on copy streams; a host thread's event and a per-op summary
    line that must not count."""
    meta = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
            {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/host:CPU"}},
            {"ph": "M", "name": "thread_name", "pid": 1, "tid": 7,
             "args": {"name": "Stream #7(MemcpyH2D,Compute,MemcpyD2H)"}},
            {"ph": "M", "name": "thread_name", "pid": 1, "tid": 13, "args": {"name": "Stream #13(MemcpyH2D)"}},
            {"ph": "M", "name": "thread_name", "pid": 1, "tid": 14, "args": {"name": "Stream #14"}},
            {"ph": "M", "name": "thread_name", "pid": 1, "tid": 99, "args": {"name": "XLA Ops"}},
            {"ph": "M", "name": "thread_name", "pid": 2, "tid": 1, "args": {"name": "python"}}]
    ms = 1000.0
    x = [{"ph": "X", "pid": 1, "tid": 7, "name": "gemm_fusion", "ts": 0, "dur": 100 * ms},
         {"ph": "X", "pid": 1, "tid": 7, "name": "fmha", "ts": 150 * ms, "dur": 50 * ms},
         {"ph": "X", "pid": 1, "tid": 13, "name": "MemcpyH2D", "ts": 80 * ms, "dur": 40 * ms},
         {"ph": "X", "pid": 1, "tid": 14, "name": "Memcpy", "ts": 90 * ms, "dur": 70 * ms,
          "args": {"memcpy_details": "kind_src:pinned kind:DtoH"}},
         {"ph": "X", "pid": 1, "tid": 99, "name": "dynamic-slice", "ts": 0, "dur": 300 * ms},
         {"ph": "X", "pid": 2, "tid": 1, "name": "MemcpyH2D", "ts": 0, "dur": 500 * ms}]
    return {"traceEvents": meta + x}


def test_copy_time_under_kernels_and_alone():
    s = to.summary(_trace())
    assert s["events"] == {"kernel": 2, "h2d": 1, "d2h": 1, "other_copy": 0}
    assert s["span_s"] == pytest.approx(0.2) and s["kernel_s"] == pytest.approx(0.15)
    assert s["gpu_idle_s"] == pytest.approx(0.0)  # 0-100 kernel, 80-160 copies, 150-200 kernel
    assert s["h2d_s"] == pytest.approx(0.04) and s["d2h_s"] == pytest.approx(0.07)
    assert s["copy_s"] == pytest.approx(0.08)  # 80-160 ms
    assert s["copy_under_kernels_s"] == pytest.approx(0.03)  # 80-100 and 150-160 ms
    assert s["copy_exposed_s"] == pytest.approx(0.05)
    assert s["both_directions_s"] == pytest.approx(0.03)  # 90-120 ms


def test_reads_a_trace_folder_and_names_bad_input(tmp_path, capsys):
    run = tmp_path / "plugins" / "profile" / "2026_12_07"
    run.mkdir(parents=True)
    with gzip.open(run / "perfetto_trace.json.gz", "wt") as fh:
        json.dump(_trace(), fh)
    assert to.main([str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out)["copy_exposed_s"] == pytest.approx(0.05)
    with pytest.raises(SystemExit, match="no perfetto_trace.json.gz"):
        to.main([str(tmp_path / "plugins" / "none")])
    empty = tmp_path / "cpu.json"
    empty.write_text(json.dumps({"traceEvents": []}))
    with pytest.raises(SystemExit, match="no GPU stream activity"):
        to.main([str(empty)])
