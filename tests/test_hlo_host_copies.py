"""scripts/hlo_host_copies.py: which host-memory copies of a loop body run beside its kernels, on a hand-written
GPU-style scheduled HLO (the device tool brings back the real ones)."""

from scripts import hlo_host_copies as hc

# <H> a stacked buffer in host memory (S(5)), <D> a block on the device, <G> a gemm's output
HLO = """HloModule jit_step, is_scheduled=true

%body (arg: (s32[], <H>, <D>)) -> (s32[], <H>, <D>) {
  %arg = (s32[], <H>, <D>) parameter(0)
  %i = s32[] get-tuple-element(%arg), index=0
  %buf = <H> get-tuple-element(%arg), index=1
  %start = ((<H>, s32[]), <D>) async-start(<H> %buf, s32[] %i), calls=%ds, backend_config={"operation_queue_id":"1"}
  %g1 = <G> custom-call(<D> %x), custom_call_target="__cublas$gemm"
  %g2 = <G> fusion(<G> %g1), kind=kCustom, calls=%t
  %add = <D> add(<D> %x, <D> %x)
  %done = <D> async-done(((<H>, s32[]), <D>) %start), backend_config={"operation_queue_id":"1"}
  %sync = <D> fusion(<H> %buf, s32[] %i), kind=kLoop, calls=%f
  ROOT %t = (s32[], <H>, <D>) tuple(s32[] %i, <H> %buf, <D> %done)
}

%cond (arg: (s32[], <H>, <D>)) -> pred[] {
  ROOT %p = pred[] constant(true)
}

%other_body (a: f32[4]) -> f32[4] {
  ROOT %n = f32[4]{0} negate(f32[4]{0} %a)
}

ENTRY %main (p: f32[8,64]) -> f32[8,64] {
  %w = (s32[], <H>, <D>) while(%init), condition=%cond, body=%body
  %w2 = f32[4]{0} while(%init2), condition=%cond, body=%other_body
  ROOT %r = f32[8,64]{1,0} get-tuple-element(%w), index=1
}
""".replace("<H>", "f32[8,64]{1,0:S(5)}").replace("<D>", "f32[64]{0}").replace("<G>", "f32[64,64]{1,0}")


def test_the_loop_body_shows_its_async_and_its_inline_host_copies():
    lines = hc.report(HLO)
    assert len(lines) == 1 and lines[0].startswith("body: ")  # other_body touches no host memory
    seq = lines[0].split("\n")[1].split()
    # the async slice runs on queue 1 around the two heavy kernels; the fused slice after it runs inline (no
    # queue); parameter, get-tuple-element and tuple move nothing
    assert seq[0] == ".×3" and seq[-1] == "."
    assert seq[seq.index("H:async-start~q1") + 1] == "C×2"
    assert seq.index("H:async-start~q1") < seq.index("C×2") < seq.index("H:async-done~q1") < seq.index("H:fusion")


def test_compress():
    assert hc.compress(["C", "C", ".", "H:copy-start", ".", ".", "C"]) == "C×2 . H:copy-start .×2 C"
