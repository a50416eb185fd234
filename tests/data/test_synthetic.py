"""The synthetic rig generator: the Cosmos layout, decodable 10 fps videos, pickle formats, the rig calibration
(with a real overlap between neighbouring views), the held-out split and determinism."""

import json
import os
import pickle

import numpy as np
import pytest

pytest.importorskip("sentencepiece")
av = pytest.importorskip("av")

from cosmos_jax import rig  # noqa: E402
from cosmos_jax.data import layout, synthetic  # noqa: E402
from cosmos_jax.weights import t5 as t5_weights  # noqa: E402

VIEWS = rig.VIEW_KEYS
D = 32
FRAMES = 12


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synth"))
    info = synthetic.generate(root, clips=2, seed=0, embed_dim=D, frames=FRAMES)
    return root, info


def _files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_tree(ds):
    root, info = ds
    clips = ["synth_s0_0000", "synth_s0_0001"]
    assert info["clips"] == clips and info["heldout"] == ["synth_s0_heldout_0000"]

    def dataset_files(ids):
        out = ["captions.json"]
        for v in VIEWS:
            out += [f"cache/prefix_{v}.pkl", f"cache/prefix_t5_embeddings_{v}.pkl"]
            out += [f"videos/{v}/{c}.mp4" for c in ids] + [f"t5_xxl/{v}/{c}.pkl" for c in ids]
        return out + [f"rig/{c}.json" for c in ids]

    expected = dataset_files(clips) + ["t5/spiece.model", "t5/config.json", "t5/weights.npz"]
    expected += [f"heldout/{f}" for f in dataset_files(info["heldout"])]
    assert _files(root) == sorted(expected)
    # A loader pointed at root lists only the training clips.
    assert sorted(os.listdir(os.path.join(root, "videos", "pinhole_front"))) == [f"{c}.mp4" for c in clips]


def test_videos_decode(ds):
    root, info = ds
    for sub, ids in (("", info["clips"]), ("heldout", info["heldout"])):
        for v in VIEWS:
            w, h = synthetic.view_size(v)
            assert (w, h) == ((144, 96) if v.startswith("pinhole_front") else (144, 66))
            for c in ids:
                with av.open(os.path.join(root, sub, "videos", v, f"{c}.mp4")) as f:
                    s = f.streams.video[0]
                    assert s.codec_context.name == "h264" and float(s.average_rate) == 10.0
                    frames = [fr.to_ndarray(format="rgb24") for fr in f.decode(s)]
                assert len(frames) == FRAMES and frames[0].shape == (h, w, 3)
                assert frames[0][: h // 4].mean() != frames[0][-h // 4:].mean()  # sky vs ground
                assert np.abs(frames[-1].astype(int) - frames[0]).mean() > 1.0  # things move


def test_pickles_and_captions(ds):
    root, info = ds
    caps = json.load(open(os.path.join(root, "captions.json")))
    assert sorted(caps) == info["clips"]
    enc = t5_weights.load_npz_folder(os.path.join(root, "t5"))
    assert enc.embed_dim == D
    texts = [rig.PREFIX_SENTENCES[v] for v in VIEWS] + [caps[c][v] for v in VIEWS for c in info["clips"]]
    fresh = iter(enc.embed(texts))  # new prompts embed identically
    for v in VIEWS:
        a, b = (open(p, "rb").read() for p in layout.prefix_paths(root, v))
        assert a == b
        prefix = pickle.loads(a)
        assert isinstance(prefix, np.ndarray) and prefix.ndim == 2 and prefix.shape[1] == D
        assert prefix.dtype == np.float32
        np.testing.assert_array_equal(prefix, next(fresh))
    for v in VIEWS:
        for c in info["clips"]:
            obj = pickle.load(open(os.path.join(root, "t5_xxl", v, f"{c}.pkl"), "rb"))
            assert isinstance(obj, list) and len(obj) == 1
            emb = obj[0]
            assert emb.dtype == np.float32 and emb.ndim == 2 and emb.shape[1] == D
            text = caps[c][v]
            n_tok = len(enc.tokenizer.encode(text)) + 1  # + </s>
            assert emb.shape[0] == n_tok and np.all(np.abs(emb).sum(1) > 0)
            np.testing.assert_array_equal(emb, next(fresh))
            if v == "pinhole_front":
                assert text.startswith(rig.PREFIX_SENTENCES["pinhole_front"] + " ")
            else:
                assert "captured from a camera" not in text and len(text.split()) > 10
    assert len({caps[c]["pinhole_front"] for c in info["clips"]}) == 2  # clips differ


def test_rig_json_and_overlap(ds):
    root, info = ds
    rig = json.load(open(os.path.join(root, "rig", f"{info['clips'][0]}.json")))
    assert rig["frame_rate"] == 10.0 and rig["vehicle_frame"] == "x forward, y left, z up"
    assert list(rig["cameras"]) == list(VIEWS)
    cams = {}
    for v, c in rig["cameras"].items():
        assert set(c) == {"source_name", "width", "height", "intrinsics", "distortion", "camera_to_vehicle"}
        assert c["source_name"] == layout.WAYMO_SOURCE_NAMES[v] and set(c["intrinsics"]) == {"fx", "fy", "cx", "cy"}
        assert c["distortion"] == [0.0] * 5 and (c["width"], c["height"]) == synthetic.view_size(v)
        m = np.asarray(c["camera_to_vehicle"])
        assert m.shape == (4, 4) and np.allclose(m[3], [0, 0, 0, 1])
        assert np.allclose(m[:3, :3] @ m[:3, :3].T, np.eye(3)) and np.isclose(np.linalg.det(m[:3, :3]), 1)
        assert 1.6 <= m[2, 3] <= 2.0  # camera height
        cams[v] = synthetic.Camera.from_json(v, c)
    yaws = {v: np.degrees(np.arctan2(cams[v].rotation[1, 0], cams[v].rotation[0, 0])) for v in VIEWS}
    assert np.allclose([yaws[v] for v in VIEWS], [0, 45, -45, 90, -90])

    def project(cam: dict, p):  # stored intrinsics/extrinsics only, Waymo camera frame (x optical axis, y left, z up)
        m = np.asarray(cam["camera_to_vehicle"])
        pc = m[:3, :3].T @ (np.asarray(p, float) - m[:3, 3])
        k = cam["intrinsics"]
        return k["cx"] - k["fx"] * pc[1] / pc[0], k["cy"] - k["fy"] * pc[2] / pc[0], pc[0]

    def inside(cam, p):
        u, v, depth = project(cam, p)
        return depth > 0 and 0 <= u < cam["width"] and 0 <= v < cam["height"]

    point = [12.0 * np.cos(np.radians(22.5)), 12.0 * np.sin(np.radians(22.5)), 0.0]  # ground, 12 m, 22.5 deg left
    c = rig["cameras"]
    assert inside(c["pinhole_front"], point) and inside(c["pinhole_front_left"], point)
    assert not inside(c["pinhole_front_right"], point) and not inside(c["pinhole_side_right"], point)
    mirrored = [point[0], -point[1], 0.0]
    assert inside(c["pinhole_front"], mirrored) and inside(c["pinhole_front_right"], mirrored)
    # The renderer's ray through that pixel passes through the point (the file describes the cameras used).
    for v in ("pinhole_front", "pinhole_front_left"):
        u, w, _ = project(c[v], point)
        cam = synthetic.make_rig()[v]
        ray = cam.pixel_rays(np.array([u]), np.array([w]))[0]
        to_point = np.asarray(point) - cam.position
        np.testing.assert_allclose(ray, to_point / np.linalg.norm(to_point), atol=1e-9)


def test_heldout_is_a_complete_dataset(ds):
    root, info = ds
    held = os.path.join(root, "heldout")
    (c,) = info["heldout"]
    assert c not in info["clips"]
    for v in VIEWS:
        assert os.path.isfile(os.path.join(held, "videos", v, f"{c}.mp4"))
        assert pickle.load(open(os.path.join(held, "t5_xxl", v, f"{c}.pkl"), "rb"))[0].shape[1] == D
        for a, b in zip(layout.prefix_paths(held, v), layout.prefix_paths(root, v), strict=True):
            assert open(a, "rb").read() == open(b, "rb").read()
    assert json.load(open(os.path.join(held, "rig", f"{c}.json")))["cameras"].keys() == set(VIEWS)
    assert list(json.load(open(os.path.join(held, "captions.json")))) == [c]


def _pkls(root):
    return {f: open(os.path.join(root, f), "rb").read() for f in _files(root) if f.endswith(".pkl")}


def test_deterministic_per_seed(ds, tmp_path):
    root, _ = ds
    again = str(tmp_path / "again")
    synthetic.generate(again, clips=2, seed=0, embed_dim=D, frames=FRAMES, render_videos=False)
    assert _pkls(again) == _pkls(root)
    for f in ("t5/spiece.model", "captions.json", "rig/synth_s0_0000.json"):
        assert open(os.path.join(again, f), "rb").read() == open(os.path.join(root, f), "rb").read()

    other = str(tmp_path / "seed1")
    synthetic.generate(other, clips=2, seed=1, embed_dim=D, frames=FRAMES, render_videos=False)
    a = pickle.load(open(os.path.join(root, "t5_xxl/pinhole_front/synth_s0_0000.pkl"), "rb"))[0]
    b = pickle.load(open(os.path.join(other, "t5_xxl/pinhole_front/synth_s1_0000.pkl"), "rb"))[0]
    assert a.shape != b.shape or not np.array_equal(a, b)
    caps0 = json.load(open(os.path.join(root, "captions.json")))
    caps1 = json.load(open(os.path.join(other, "captions.json")))
    assert list(caps0.values()) != list(caps1.values())


def test_wide_embeddings_use_a_fixed_projection(tmp_path):
    texts = [rig.PREFIX_SENTENCES[v] for v in VIEWS]
    enc = synthetic.build_text_encoder(str(tmp_path / "t5"), texts + synthetic.GRAMMAR_CORPUS, embed_dim=160, seed=0)
    assert enc.model.config.d_model == 64 and enc.proj.shape == (64, 160)
    assert os.path.isfile(tmp_path / "t5" / "proj.npy")
    (e,) = enc.embed(texts[:1])
    assert e.shape == (len(enc.tokenizer.encode(texts[0])) + 1, 160) and e.dtype == np.float32


def test_text_only_cli_beside_rendered_videos(ds, tmp_path):
    """`--text_only` writes the text beside videos rendered earlier (the same bytes as a full run) and refuses,
    naming a missing video, when the videos are not there."""
    root, _ = ds
    copy = tmp_path / "copy"
    for sub in ("videos", "heldout/videos"):
        for v in VIEWS:
            os.makedirs(copy / sub / v)
            for f in os.listdir(os.path.join(root, sub, v)):
                os.link(os.path.join(root, sub, v, f), copy / sub / v / f)
    args = ["--out", str(copy), "--clips", "2", "--embed_dim", str(D), "--frames", str(FRAMES), "--text_only"]
    synthetic.main(args)
    assert _pkls(str(copy)) == _pkls(root)
    assert _files(str(copy)) == _files(root)

    with pytest.raises(SystemExit, match=r"1 video\(s\) missing .*synth_s0_0002\.mp4"):
        synthetic.main([*args[:2], "--clips", "3", *args[4:]])
