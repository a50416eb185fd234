"""Waymo v1 segments → prepare_waymo → embed_captions → validate, on synthetic tfrecords in the real wire format."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from cosmos_jax import rig
from cosmos_jax.data import dataset, embed_captions, layout, pickles, prepare_waymo, tfrecord, validate, video
from cosmos_jax.data import waymo_proto as wp
from cosmos_jax.rig import VIEW_KEYS
from cosmos_jax.weights import t5 as t5_weights
from tests.data import fixtures as fx
from tests.data import waymo_encode as we
from tests.data import waymo_fixtures as wf

ID_A = "1071392229495085036_1844_790_1864_790"
ID_B = "2094681306939952000_2972_300_2992_300"
FILE_A = f"individual_files_training_segment-{ID_A}_with_camera_labels.tfrecord"
FILE_B = f"segment-{ID_B}_with_camera_labels.tfrecord"
FRAMES = 12
D = 8


def _segments(folder: str) -> dict[str, list[int]]:
    """Segment A: context name set, unpacked doubles, a 150 kB `lasers` field per frame; segment B: no context
    name (clip id from the file name), packed doubles."""
    return {ID_A: wf.write_segment(os.path.join(folder, FILE_A), ID_A, FRAMES, seed=1, laser_bytes=150_000),
            ID_B: wf.write_segment(os.path.join(folder, FILE_B), "", FRAMES, seed=2, packed=True)}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    base = tmp_path_factory.mktemp("waymo")
    inp, root = str(base / "tfrecords"), str(base / "data" / "waymo")
    offsets = _segments(inp)
    assert prepare_waymo.main(["--input", inp, "--output", root, "--workers", "2", "--no_progress"]) == 0
    return inp, root, offsets


# --------------------------------------------------------------------------------------------------------------------
# tfrecord and wire format

def test_tfrecord_roundtrip_and_errors(tmp_path):
    assert tfrecord.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    path = str(tmp_path / "r.tfrecord")
    recs = [b"", b"abc", bytes(range(256)) * 40]
    offsets = we.write_records(path, recs)
    assert offsets == [0, 16, 35] and list(tfrecord.iter_records(path)) == list(zip(offsets, recs, strict=True))
    raw = bytearray(open(path, "rb").read())
    bad = str(tmp_path / "bad.tfrecord")
    for pos, what, off in ((len(raw) - 1, "data CRC mismatch", 35), (16 + 9, "length CRC mismatch", 16)):
        corrupt = bytearray(raw)
        corrupt[pos] ^= 0x40
        open(bad, "wb").write(corrupt)
        with pytest.raises(tfrecord.TFRecordError, match=f"bad.tfrecord: byte offset {off}: record {what}"):
            list(tfrecord.iter_records(bad))
    for cut, off in ((len(raw) - 5, 35), (40, 35), (20, 16)):
        open(bad, "wb").write(raw[:cut])
        with pytest.raises(tfrecord.TFRecordError, match=f"bad.tfrecord: byte offset {off}: .*truncated file"):
            list(tfrecord.iter_records(bad))


def test_wire_format_skips_unknown_fields_and_accepts_packed():
    rng = np.random.default_rng(0)
    for packed in (False, True):
        data = wf.frame_record(ID_A, 3, rng, packed=packed, laser_bytes=300_000)
        assert len(data) > 300_000
        frame = wp.parse_frame(data)
        assert frame.context.name == ID_A and frame.timestamp_micros == 1_550_000_000_300_000
        assert [i.name for i in frame.images] == [1, 2, 3, 4, 5] and frame.images[0].image[:2] == b"\xff\xd8"
        cals = {c.name: c for c in frame.context.camera_calibrations}
        ref = wf.calibration("pinhole_side_left")
        assert cals[4] == ref and len(ref.intrinsic) == 9 and len(ref.extrinsic) == 16
    split = we.encode_frame(wp.Frame(wp.Context("", ()), -5, ()))  # negative int64, merged context chunks
    merged = wp.parse_frame(split + we.field_bytes(1, we.field_bytes(1, b"late_name")))
    assert merged.timestamp_micros == -5 and merged.context.name == "late_name"
    with pytest.raises(wp.ProtoError, match="field 4 declares"):
        wp.parse_frame(we.encode_key(4, wp.WT_BYTES) + we.encode_varint(100) + b"x")


def test_wire_format_agrees_with_protobuf_runtime():
    """Our encoder's bytes parse with Google's protobuf runtime (a trimmed descriptor with dataset.proto's numbers),
    and its serialization (proto2: repeated doubles unpacked) parses with our decoder."""
    pb = pytest.importorskip("google.protobuf.descriptor_pb2")
    from google.protobuf import descriptor_pool, message_factory

    F = pb.FieldDescriptorProto
    fd = pb.FileDescriptorProto(name="w.proto", package="w", syntax="proto2")
    for name, fields in (
            ("Transform", [("transform", 1, F.TYPE_DOUBLE, 3, "")]),
            ("CameraCalibration", [("name", 1, F.TYPE_INT32, 1, ""), ("intrinsic", 2, F.TYPE_DOUBLE, 3, ""),
                                   ("extrinsic", 3, F.TYPE_MESSAGE, 1, ".w.Transform"),
                                   ("width", 4, F.TYPE_INT32, 1, ""), ("height", 5, F.TYPE_INT32, 1, "")]),
            ("Context", [("name", 1, F.TYPE_STRING, 1, ""),
                         ("camera_calibrations", 2, F.TYPE_MESSAGE, 3, ".w.CameraCalibration")]),
            ("CameraImage", [("name", 1, F.TYPE_INT32, 1, ""), ("image", 2, F.TYPE_BYTES, 1, "")]),
            ("Frame", [("context", 1, F.TYPE_MESSAGE, 1, ".w.Context"), ("timestamp_micros", 2, F.TYPE_INT64, 1, ""),
                       ("images", 4, F.TYPE_MESSAGE, 3, ".w.CameraImage")])):
        m = fd.message_type.add(name=name)
        for fname, num, typ, label, tname in fields:
            m.field.add(name=fname, number=num, type=typ, label=label, type_name=tname or None)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    frame_cls = message_factory.GetMessageClass(pool.FindMessageTypeByName("w.Frame"))
    rng = np.random.default_rng(0)
    for packed in (False, True):
        data = wf.frame_record(ID_A, 2, rng, packed=packed, laser_bytes=1000)
        ours, ref = wp.parse_frame(data), frame_cls.FromString(data)
        assert (ref.context.name, ref.timestamp_micros) == (ours.context.name, ours.timestamp_micros)
        assert [(c.name, tuple(c.intrinsic), tuple(c.extrinsic.transform), c.width, c.height)
                for c in ref.context.camera_calibrations] == [dataclasses.astuple(c)
                                                              for c in ours.context.camera_calibrations]
        assert [(i.name, i.image) for i in ref.images] == [(i.name, i.image) for i in ours.images]
        ref.timestamp_micros = -7
        again = wp.parse_frame(ref.SerializeToString())
        assert again.timestamp_micros == -7 and (again.context, again.images) == (ours.context, ours.images)


# --------------------------------------------------------------------------------------------------------------------
# prepare → embed → validate

def _write_csv(path: str, captions: dict[str, str]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(list(captions))
        w.writerow(list(captions.values()))


def _front_caption(i: int) -> str:
    return f"{rig.PREFIX_SENTENCES['pinhole_front']} A red car, then a \"white\" van, drives ahead ({i})."


def test_prepare_outputs_and_rig(prepared):
    _, root, _ = prepared
    for clip in (ID_A, ID_B):
        for view in VIEW_KEYS:
            info = video.probe(layout.video_path(root, view, clip))
            assert (info.width, info.height, info.num_frames, info.fps) == (*wf.SIZES[view], FRAMES, 10.0)
        frames = video.read_frames(layout.video_path(root, "pinhole_front_right", clip), range(FRAMES))
        means = frames[:, -8:, :, 1].mean(axis=(1, 2))  # bottom rows: background, green not boosted for ci=2
        np.testing.assert_allclose(means, [wf.background(f, 2) for f in range(FRAMES)], atol=3)
        rig = json.load(open(layout.rig_path(root, clip)))
        assert rig["frame_rate"] == 10.0 and rig["vehicle_frame"] == "x forward, y left, z up"
        for view in VIEW_KEYS:
            cam, ref = rig["cameras"][view], wf.calibration(view)
            assert cam["source_name"] == layout.WAYMO_SOURCE_NAMES[view]
            assert (cam["width"], cam["height"]) == wf.SIZES[view]
            assert cam["intrinsics"] == dict(zip(("fx", "fy", "cx", "cy"), ref.intrinsic[:4], strict=True))
            assert cam["distortion"] == list(wf.DISTORTION)
            assert np.array(cam["camera_to_vehicle"]).ravel().tolist() == list(ref.extrinsic)
    assert sorted(os.listdir(root)) == ["rig", "videos"]  # no t5_xxl/ or cache/, no leftover .partial/


def test_embed_validate_and_resume(prepared, tmp_path):
    inp, root, _ = prepared
    root_copy = str(tmp_path / "waymo")
    shutil.copytree(root, root_copy)
    t5_dir = str(tmp_path / "enc" / "t5")
    corpus = list(rig.PREFIX_SENTENCES.values()) + [_front_caption(i) for i in range(3)]
    from cosmos_jax.data.synthetic_text import build_text_encoder

    enc = build_text_encoder(t5_dir, corpus, D, seed=0)
    caps = str(tmp_path / "captions.csv")
    _write_csv(caps, {ID_A: _front_caption(0), "999_no_video": _front_caption(1), ID_B: _front_caption(2)})
    assert embed_captions.main(["--captions", caps, "--dataset", root_copy, "--t5", str(tmp_path / "enc"),
                                "--batch_size", "1", "--no_progress"]) == 0
    emb = pickles.safe_load(layout.caption_path(root_copy, "pinhole_front", ID_A))
    assert isinstance(emb, list) and emb[0].dtype == np.float32 and emb[0].ndim == 2
    np.testing.assert_array_equal(emb[0], enc.embed([_front_caption(0)])[0])
    for view in VIEW_KEYS:
        a, b = (pickles.safe_load(p) for p in layout.prefix_paths(root_copy, view))
        assert isinstance(a, np.ndarray) and a.dtype == np.float32 and a.ndim == 2
        np.testing.assert_array_equal(a, enc.embed([rig.PREFIX_SENTENCES[view]])[0])
        np.testing.assert_array_equal(a, b)
    assert not os.path.exists(os.path.join(root_copy, "t5_xxl", "pinhole_front_left"))
    out = io.StringIO()
    spec = dataset.DataSpec.from_config(fx.config(root_copy))
    assert validate.validate(spec, out) == [], out.getvalue()
    report = out.getvalue()
    assert "clips 2, windows 8" in report and "fps {10.0: 10}" in report
    assert "pinhole_side_left: {12: 2}" in report
    assert "pinhole_side_right 96x44" in report and "caption embeddings: 2 read, 0 missing, 0 extra" in report

    # Resume: finished clips are skipped, nothing rewritten.
    mtimes = {p: os.stat(p).st_mtime_ns for p in prepare_waymo.output_paths(root_copy, ID_A)}
    results, failures = prepare_waymo.prepare(inp, root_copy, workers=1, progress=False)
    assert failures == [] and [r.skipped for r in results] == [True, True]
    assert all(os.stat(p).st_mtime_ns == t for p, t in mtimes.items())
    emb_path = layout.caption_path(root_copy, "pinhole_front", ID_B)
    t_emb = os.stat(emb_path).st_mtime_ns
    r = embed_captions.embed_dataset(caps, root_copy, "", encoder=enc, progress=False)
    assert (r["written"], r["skipped"], r["unused_captions"]) == (0, 2, 1)
    assert os.stat(emb_path).st_mtime_ns == t_emb

    # Multiview JSON captions: all five views, raw text; the loader with load_mv_emb=True accepts the result.
    mv = {f"{c}_{v}": f"View {v} of clip {c}." for c in (ID_A, ID_B) for v in VIEW_KEYS}
    del mv[f"{ID_B}_pinhole_side_left"]
    caps_json = str(tmp_path / "mv.json")
    json.dump(mv, open(caps_json, "w"))
    r = embed_captions.embed_dataset(caps_json, root_copy, "", multiview=True, encoder=enc, progress=False)
    assert r["written"] == 7 and r["skipped"] == 2 and r["no_caption"] == [(ID_B, "pinhole_side_left")]
    np.testing.assert_array_equal(
        pickles.read_embedding(layout.caption_path(root_copy, "pinhole_side_right", ID_A)),
        enc.embed([f"View pinhole_side_right of clip {ID_A}."])[0])
    problems = validate.validate(dataset.DataSpec.from_config(fx.config(root_copy, load_mv_emb=True)), io.StringIO())
    assert problems == [f"{layout.caption_path(root_copy, 'pinhole_side_left', ID_B)}: caption embedding missing"]


def test_caption_files(tmp_path):
    p = str(tmp_path / "c.csv")
    _write_csv(p, {"a_1": "x, with \"quotes\"\nand a newline", "b_2": "y"})
    assert embed_captions.read_csv_captions(p) == {"a_1": "x, with \"quotes\"\nand a newline", "b_2": "y"}
    with pytest.raises(embed_captions.CaptionFileError, match="--multiview needs per-view captions"):
        embed_captions.read_captions(p, multiview=True)
    with open(p, "w") as f:
        f.write("a_1,x\nb_2,y\nc_3,z\n")
    with pytest.raises(embed_captions.CaptionFileError, match="c.csv: 3 non-empty rows.*transpose"):
        embed_captions.read_csv_captions(p)
    j = str(tmp_path / "c.json")
    json.dump({"a_1_pinhole_front": "ahead.", "a_1_pinhole_front_left": "left.", "oops": "x"}, open(j, "w"))
    with pytest.raises(embed_captions.CaptionFileError, match="1 entry not of the form.*'oops'"):
        embed_captions.read_captions(j, multiview=True)
    json.dump({"a_1_pinhole_front": "ahead.", "a_1_pinhole_front_left": "left."}, open(j, "w"))
    assert embed_captions.read_captions(j, True) == {"a_1": {"pinhole_front": "ahead.", "pinhole_front_left": "left."}}
    front = rig.PREFIX_SENTENCES["pinhole_front"]
    assert embed_captions.read_captions(j, False) == {"a_1": {"pinhole_front": f"{front} ahead."}}
    with pytest.raises(ValueError, match="not a text encoder folder.*found \\['c.csv', 'c.json'\\]"):
        t5_weights.load_encoder(str(tmp_path))


# --------------------------------------------------------------------------------------------------------------------
# Resize, failures

def test_resize_scales_intrinsics(prepared, tmp_path):
    inp, _, _ = prepared
    r = prepare_waymo.prepare_segment(os.path.join(inp, FILE_B), str(tmp_path), resize=(64, 36))
    assert (r.clip_id, r.frames, r.skipped) == (ID_B, FRAMES, False)
    rig = json.load(open(layout.rig_path(str(tmp_path), ID_B)))
    for view in VIEW_KEYS:
        info = video.probe(layout.video_path(str(tmp_path), view, ID_B))
        assert (info.width, info.height, info.num_frames) == (64, 36, FRAMES)
        w, h = wf.SIZES[view]
        fu, fv, cu, cv = wf.calibration(view).intrinsic[:4]
        got = rig["cameras"][view]
        assert (got["width"], got["height"]) == (64, 36)
        np.testing.assert_allclose([got["intrinsics"][k] for k in ("fx", "fy", "cx", "cy")],
                                   [fu * 64 / w, fv * 36 / h, cu * 64 / w, cv * 36 / h], rtol=1e-12)
    with pytest.raises(ValueError, match="must be positive and even"):
        prepare_waymo.parse_size("64x35")


def _assert_clean_failure(root: str, clip: str, good: str) -> None:
    assert not any(os.path.exists(p) for p in prepare_waymo.output_paths(root, clip))
    assert all(os.path.isfile(p) for p in prepare_waymo.output_paths(root, good))
    assert not os.path.exists(os.path.join(root, prepare_waymo.PARTIAL_DIR))


def test_corrupt_segments_fail_alone(prepared, tmp_path, capsys):
    inp, _, offsets = prepared
    bad_in = str(tmp_path / "in")
    shutil.copytree(inp, bad_in)
    a = os.path.join(bad_in, FILE_A)
    raw = bytearray(open(a, "rb").read())
    data_crc = offsets[ID_A][6] - 1  # last byte of record 5's data CRC
    raw[data_crc] ^= 0xFF
    open(a, "wb").write(raw)
    root = str(tmp_path / "out1")
    assert prepare_waymo.main(["--input", bad_in, "--output", root, "--no_progress"]) == 1
    out = capsys.readouterr().out
    assert f"FAILED {a}: byte offset {offsets[ID_A][5]}: record data CRC mismatch" in out, out
    _assert_clean_failure(root, ID_A, ID_B)

    b = os.path.join(bad_in, FILE_B)
    shutil.copy(os.path.join(inp, FILE_A), a)
    size_b = os.path.getsize(b)
    os.truncate(b, size_b - 100)
    root = str(tmp_path / "out2")
    proc = subprocess.run([sys.executable, "-m", "cosmos_jax.data.prepare_waymo", "--input", bad_in, "--output",
                           root, "--workers", "2"], capture_output=True, text=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    msg = (f"{b}: byte offset {offsets[ID_B][-1]}: record of {size_b - offsets[ID_B][-1] - 16} data bytes ends at "
           f"byte {size_b}, past the end of the file ({size_b - 100} bytes): truncated file")
    assert f"FAILED {msg}" in proc.stdout and f"FAILED {msg}" in proc.stderr
    assert "prepared 1 segment(s)" in proc.stdout and "failed 1" in proc.stdout
    _assert_clean_failure(root, ID_B, ID_A)


def test_missing_camera_is_an_error(tmp_path):
    path = str(tmp_path / "in" / "seg.tfrecord")
    offsets = wf.write_segment(path, "clip_x", 2, drop_view="pinhole_side_right")
    with pytest.raises(prepare_waymo.SegmentError,
                       match=f"seg.tfrecord: byte offset {offsets[0]}: frame 0 has no image for SIDE_RIGHT"):
        prepare_waymo.prepare_segment(path, str(tmp_path / "out"))
    assert not os.path.exists(os.path.join(str(tmp_path / "out"), "videos", "pinhole_front", "clip_x.mp4"))


def test_prepared_dataset_trains_one_step(prepared, tmp_path):
    """tfrecords -> prepare_waymo -> embed_captions -> validate -> one train step."""
    from cosmos_jax.data.synthetic_text import build_text_encoder

    _, root, _ = prepared
    root_copy = str(tmp_path / "waymo")
    shutil.copytree(root, root_copy)
    corpus = list(rig.PREFIX_SENTENCES.values()) + [_front_caption(i) for i in range(3)]
    enc = build_text_encoder(str(tmp_path / "enc" / "t5"), corpus, D, seed=0)
    caps = str(tmp_path / "captions.csv")
    _write_csv(caps, {ID_A: _front_caption(0), ID_B: _front_caption(2)})
    embed_captions.embed_dataset(caps, root_copy, "", encoder=enc, progress=False)
    assert validate.validate(dataset.DataSpec.from_config(fx.config(root_copy)), io.StringIO()) == []
    root_dir = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cmd = [sys.executable, "-m", "cosmos_jax.train", "--config=configs/demo.py", "--noprogress",
           f"--config.data.dataset_dir={root_copy}", f"--config.model.crossattn_emb_channels={D}",
           "--config.data.video_size=(16, 32)", "--config.max_iter=1", "--config.checkpoint.save_iter=1",
           "--config.batch_size=1", "--config.model.num_blocks=1", "--config.model.model_channels=32",
           "--config.log_every=1", "--config.samples.enabled=False"]
    env = {**os.environ, "OUTPUT_ROOT": str(tmp_path / "out"), "XLA_FLAGS": ""}
    p = subprocess.run(cmd, cwd=root_dir, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    job = tmp_path / "out/posttraining/demo/demo_single2multiview"
    rows = [json.loads(x) for x in open(job / "metrics.jsonl")]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1]
    assert os.path.isfile(job / "checkpoints/iter_000000001_ema_model.pt")
